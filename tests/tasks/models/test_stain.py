"""tasks/models/stain.py: glass / tissue / stain-positive by HSV saturation and colour
deconvolution, against the standard library's ``colorsys`` and the published H&E-DAB stain
vectors (Ruifrok & Johnston 2001), with thresholds fitted by Otsu on the sample."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from segflow.tasks.config import load_config
from segflow.tasks.errors import UserError
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.models.stain import saturation, stain_density

SPEC = InputSpec(bands=3, dtype="uint8")
#: rows: the optical-density direction of haematoxylin, eosin and DAB in RGB
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def _slide_pixels(seed: int = 0) -> np.ndarray:
    """(3, 40, 50) uint8: bright glass, pink (eosin) tissue and purple (haematoxylin) nuclei."""
    rng = np.random.default_rng(seed)
    colours = np.array([[235, 235, 238], [230, 150, 190], [110, 70, 150]], float)
    kind = rng.choice(3, size=(40, 50), p=[0.4, 0.4, 0.2])
    rgb = colours[kind] + rng.normal(0, 6, (40, 50, 3))
    return np.moveaxis(np.clip(np.rint(rgb), 1, 255).astype(np.uint8), -1, 0)


def test_saturation_is_hsv_saturation():
    pixels = _slide_pixels()
    expected = np.array([[colorsys.rgb_to_hsv(*(pixels[:, r, c] / 255.0))[1]
                          for c in range(pixels.shape[2])] for r in range(pixels.shape[1])])
    np.testing.assert_allclose(saturation(pixels), expected, atol=1e-12)


def test_haematoxylin_density_is_the_deconvolved_optical_density():
    pixels = _slide_pixels(1)
    rgb = np.moveaxis(pixels, 0, -1).astype(np.float64) / 255
    unit = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
    # optical density in log base 1e-6 (skimage's scale), then unmixed into the three stains
    density = np.log(np.maximum(rgb, 1e-6)) / np.log(1e-6) @ np.linalg.inv(unit)
    expected = np.maximum(density, 0)
    for stain, k in (("hematoxylin", 0), ("eosin", 1), ("dab", 2)):
        np.testing.assert_allclose(stain_density(pixels, stain), expected[..., k], atol=2e-3)
    nuclei = np.abs(rgb - np.array([110, 70, 150]) / 255).max(axis=-1) < 0.1
    assert stain_density(pixels, "hematoxylin")[nuclei].mean() > \
        stain_density(pixels, "hematoxylin")[~nuclei].mean()


@dataclass(frozen=True)
class _Sample:
    """A source whose decimated sample is the given pixels, (n, 3)."""

    pixels: np.ndarray
    uri: str = "slide.tif"

    def read_overview(self, max_cells: int) -> np.ndarray:
        return self.pixels


def test_thresholds_are_otsu_of_the_sample_and_classes_follow_them():
    pixels = _slide_pixels(2)
    model = build_model(load_config(overrides=["model.kind=stain"]), SPEC, "slide.tif")
    assert [c.name for c in model.classes] == ["glass", "tissue", "hematoxylin_positive"]
    model.fit(_Sample(pixels.reshape(3, -1).T), None)
    sat = saturation(pixels)
    assert model.tissue == pytest.approx(threshold_otsu(sat.ravel()))
    density = stain_density(pixels, "hematoxylin")
    assert model.positive == pytest.approx(threshold_otsu(density[sat > model.tissue]))

    mask = model.predict(pixels, np.ones((40, 50), bool), (slice(0, 40), slice(0, 50)))
    tissue = sat > model.tissue
    expected = np.where(tissue, np.where(density > model.positive, 2, 1), 0)
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) == {0, 1, 2}


def test_given_thresholds_are_kept_and_non_rgb_input_is_refused():
    cfg = load_config(overrides=["model.kind=stain", "model.params.tissue=0.2",
                                 "model.params.positive=0.05"])
    model = build_model(cfg, SPEC, "slide.tif")
    model.fit(_Sample(_slide_pixels().reshape(3, -1).T), None)
    assert (model.tissue, model.positive) == (0.2, 0.05)
    with pytest.raises(UserError, match="needs 8-bit RGB"):
        build_model(cfg, InputSpec(bands=3, dtype="uint16"), "slide.tif")
