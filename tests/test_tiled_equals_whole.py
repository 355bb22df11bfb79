"""Crop stitching is exact: a stride-1 model tiled with halo >= receptive field equals one
whole-image forward pass, at chunk and tile seams and at the image borders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.models.tiling import predict_tiled
from segflow.tasks.sources.registry import open_source
from segflow.testing import predict_chunked

DATA = Path(__file__).parent / "data"


def _whole_image(model_path, pixels: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(model_path)).eval()
    with torch.inference_mode():
        return module(torch.from_numpy(pixels[None])).argmax(1)[0].numpy().astype(np.uint8)


def test_predict_tiled_equals_whole_block(dilated_model):
    rng = np.random.default_rng(0)
    block = rng.random((3, 301, 257), dtype=np.float32)
    module = torch.jit.load(str(dilated_model)).eval()

    def forward(batch):
        return module(batch).argmax(1).to(torch.uint8)

    whole = (slice(0, 301), slice(0, 257))
    with torch.inference_mode():
        tiled = predict_tiled(forward, torch.from_numpy(block), whole, tile=64, halo=8,
                              batch=3).numpy()
    np.testing.assert_array_equal(tiled, _whole_image(dilated_model, block))


def _scene(rgb_tif: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The scene as segflow feeds it with ``model.normalize`` set to its own per-band mean and
    std (nodata as 0), its valid-pixel mask, and those config keys. Normalised, the seeded net
    splits the scene into several classes (on 0..1 input it gives one class nearly
    everywhere, and a one-class mask proves nothing)."""
    with rasterio.open(rgb_tif) as src:
        pixels, valid = src.read().astype(np.float64), src.dataset_mask() > 0
    mean, std = pixels[:, valid].mean(axis=1), pixels[:, valid].std(axis=1)
    x = ((pixels - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    x[:, ~valid] = 0.0  # segflow feeds nodata as 0
    return x, valid, [f"model.normalize={{mean: {mean.tolist()}, std: {std.tolist()}}}"]


def _config(dilated_model: Path, normalize: list[str], halo: int, *extra: str):
    """chunk 150, tile 96: they divide neither side of the 718x791 scene (30 chunks)."""
    return load_config(overrides=[
        "model.kind=torchscript", f"model.weights={dilated_model}",
        "model.params.receptive_field=7", "tiling.chunk=150", "tiling.tile=96",
        f"tiling.halo={halo}", "tiling.batch=4", *normalize, *extra])


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory, dilated_model, dask_address) -> dict:
    """segflow's mask of the real RGB scene with halo 8 >= the receptive field 7, every chunk
    computed."""
    folder = tmp_path_factory.mktemp("tiled")
    rgb_tif = Path(shutil.copy(DATA / "rgb_byte.tif", folder / "rgb_byte.tif"))
    cfg = _config(dilated_model, _scene(rgb_tif)[2], 8, "tiling.skip_empty=false")
    result = segment_image(str(rgb_tif), str(folder / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    return {**result, "source": rgb_tif}


def test_segflow_tiled_equals_whole_image_pass(rgb_run, dilated_model):
    assert rgb_run["chunks_total"] == 5 * 6
    tiled = zarr.open_array(rgb_run["output_uri"], path="0", mode="r")[:]
    pixels, valid, _ = _scene(rgb_run["source"])
    whole = _whole_image(dilated_model, pixels)
    assert len(np.unique(whole[valid])) >= 3
    np.testing.assert_array_equal(tiled[valid], whole[valid])
    assert (tiled[~valid] == 255).all()


def test_too_small_halo_is_not_exact(dilated_model):
    """The equality above is not vacuous: with a halo below the receptive field seams differ.
    On arrays: the model as a run builds it, predicted chunk by chunk as workers do."""
    rgb_tif = DATA / "rgb_byte.tif"
    pixels, valid, normalize = _scene(rgb_tif)
    cfg = _config(dilated_model, normalize, 2)
    source = open_source(str(rgb_tif), cfg.input)
    model = build_model(cfg, InputSpec(bands=3, dtype="uint8"), source.uri)
    tiled = predict_chunked(model, source, 150, 2)
    assert (tiled[valid] != _whole_image(dilated_model, pixels)[valid]).sum() > 100


def test_model_is_loaded_once_per_worker(rgb_run, dilated_model, client):
    assert rgb_run["chunks_total"] - rgb_run["chunks_skipped"] > 10

    target = str(dilated_model)

    def loaded():
        from segflow.tasks.models import torch_model

        return [path for path, _ in torch_model._CACHE if path == target]

    per_worker = client.run(loaded)
    assert all(paths == [target] for paths in per_worker.values())
