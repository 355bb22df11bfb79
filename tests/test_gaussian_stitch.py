"""``tiling.stitch: gaussian`` against ``crop`` where cropping cannot be exact: a receptive field
larger than the halo, and whole-tile normalisation (InstanceNorm), which no halo fixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from segflow.tasks.config import load_config
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.models.tiling import importance_map
from segflow.tasks.models.torch_model import TilingWarning
from tests.conftest import scripted_model

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The real Landsat RGB scene (uint8, nodata 0), its valid mask, per-band mean and std."""
    with rasterio.open(DATA / "rgb_byte.tif") as src:
        pixels, valid = src.read(), src.dataset_mask() > 0
    real = pixels[:, valid].astype(np.float64)
    return pixels, valid, real.mean(axis=1), real.std(axis=1)


def _whole(model_path: Path, scene) -> np.ndarray:
    pixels, valid, mean, std = scene
    x = ((pixels - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    x[:, ~valid] = 0
    module = torch.jit.load(str(model_path)).eval()
    with torch.inference_mode():
        return module(torch.from_numpy(x[None]))[0].argmax(0).numpy()


def _disagreement(model_path: Path, scene, stitch: str, tile: int, halo: int) -> float:
    """Fraction of valid cells where the tiled mask differs from a whole-image pass."""
    pixels, valid, mean, std = scene
    cfg = load_config(overrides=["model.kind=torchscript", f"model.weights={model_path}",
                                 f"tiling.stitch={stitch}", f"tiling.tile={tile}",
                                 f"tiling.halo={halo}", "tiling.batch=16",
                                 f"model.normalize={{mean: {mean.tolist()}, std: {std.tolist()}}}"])
    model = build_model(cfg, InputSpec(bands=3, dtype="uint8"), "rgb_byte.tif")
    whole = tuple(slice(0, n) for n in valid.shape)
    tiled = model.predict(pixels, valid, whole)
    return float((tiled != _whole(model_path, scene))[valid].mean())


def test_importance_map_peaks_in_the_centre_with_sigma_an_eighth_of_the_side():
    w = importance_map((64, 33)).numpy()
    assert w.shape == (64, 33) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0, abs=0.01)  # an even side peaks between cells
    assert np.unravel_index(w.argmax(), w.shape) in {(31, 16), (32, 16)}
    # sigma = side / 8: 8 cells from the centre of a 65-cell window, exp(-8² / (2 sigma²))
    row = importance_map((65,)).numpy()
    assert row[32 + 8] / row[32] == pytest.approx(np.exp(-64 / (2 * (65 / 8) ** 2)), rel=1e-6)
    assert (w > 0).all()


def test_gaussian_blending_disagrees_less_than_crop_when_halo_is_short(dilated_model, scene):
    """DilatedNet reaches 7 px; with a 2 px halo and 64 px tiles both stitchings miss context
    at tile seams, and blending the overlapping windows recovers part of it."""
    crop = _disagreement(dilated_model, scene, "crop", tile=64, halo=2)
    blend = _disagreement(dilated_model, scene, "gaussian", tile=64, halo=2)
    print(f"disagreement with the whole-image pass: crop {crop:.4%}, gaussian {blend:.4%}")
    assert 0 < blend < crop
    # the same seams vanish under crop once the halo covers the receptive field
    assert _disagreement(dilated_model, scene, "crop", tile=64, halo=8) == 0


class InstanceNormNet(torch.nn.Module):
    """Two 3x3 convolutions (receptive field 2) around an InstanceNorm: each output depends on
    the mean and variance of the whole tile."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.InstanceNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def instance_norm_model(tmp_path_factory) -> Path:
    return scripted_model(tmp_path_factory, InstanceNormNet, "instnorm.pt")


def test_instance_norm_is_flagged_and_never_exact_under_crop(instance_norm_model, scene):
    cfg = load_config(overrides=["model.kind=torchscript", f"model.weights={instance_norm_model}"])
    with pytest.warns(TilingWarning, match="InstanceNorm2d.*whatever the halo.*gaussian"):
        build_model(cfg, InputSpec(bands=3, dtype="uint8"), "rgb_byte.tif")
    with pytest.warns(TilingWarning):
        figures = {(stitch, halo): _disagreement(instance_norm_model, scene, stitch, 128, halo)
                   for stitch in ("crop", "gaussian") for halo in (4, 32)}
    print("InstanceNorm disagreement with the whole-image pass:",
          {k: f"{v:.4%}" for k, v in figures.items()})
    # the receptive field (2 px) is far inside either halo, yet crop is not exact
    assert figures[("crop", 4)] > 0 and figures[("crop", 32)] > 0
