"""tasks/models/spectral_index.py: land-cover classes from NDVI and NDWI / MNDWI, against the
indices computed cell by cell here in plain Python floats."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.tasks.config import load_config
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.models.spectral_index import normalized_difference

SPEC = InputSpec(bands=5, dtype="uint16")
WHOLE = (slice(0, 12), slice(0, 10))


def _pixels(seed: int = 0) -> np.ndarray:
    """5 Landsat-like bands, with zero cells so that some index denominators are 0."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 400, (5, 12, 10)).astype(np.uint16)
    pixels[:, 0, :3] = 0  # every band 0: both indices 0/0
    return pixels


def _expected(pixels: np.ndarray, water_band: int, ndwi: float, ndvi: float, bare: float
              ) -> np.ndarray:
    def nd(a: float, b: float) -> float:
        return 0.0 if a + b == 0 else (a - b) / (a + b)

    out = np.zeros(pixels.shape[1:], np.uint8)
    for r, c in np.ndindex(*out.shape):
        green, red, nir = (float(pixels[i - 1, r, c]) for i in (2, 3, 4))
        water = nd(green, float(pixels[water_band - 1, r, c]))
        veg = nd(nir, red)
        out[r, c] = 1 if water > ndwi else 2 if veg > ndvi else 3 if veg < bare else 0
    return out


def test_normalized_difference_is_zero_where_the_sum_is():
    a, b = np.array([3.0, 0.0, -2.0]), np.array([1.0, 0.0, 2.0])
    np.testing.assert_array_equal(normalized_difference(a, b), [0.5, 0.0, 0.0])


@pytest.mark.parametrize("index, water_band", [("ndwi", 4), ("mndwi", 5)])
def test_classes_follow_the_first_matching_rule(index, water_band):
    cfg = load_config(overrides=["model.kind=index", f"model.params.water_index={index}",
                                 "model.params.ndwi=0.1", "model.params.ndvi=0.2",
                                 "model.params.bare=-0.1"])
    model = build_model(cfg, SPEC, "scene.tif")
    assert [c.name for c in model.classes] == ["other", "water", "vegetation", "bare"]
    pixels = _pixels()
    got = model.predict(pixels, np.ones(pixels.shape[1:], bool), WHOLE)
    expected = _expected(pixels, water_band, 0.1, 0.2, -0.1)
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(expected)) == {0, 1, 2, 3}  # every rule decides some cell
    assert got.dtype == np.uint8 and model.receptive_field == 0


def test_bands_can_be_reassigned_and_only_the_core_is_returned():
    cfg = load_config(overrides=["model.kind=index", "model.params.bands={green: 1, red: 2, "
                                 "nir: 3, swir1: 4}"])
    model = build_model(cfg, SPEC, "scene.tif")
    pixels = _pixels(1)
    core = (slice(2, 9), slice(1, 7))
    got = model.predict(pixels, np.ones(pixels.shape[1:], bool), core)
    # bands 1, 2, 3 where _expected reads 2, 3, 4: rolled by one; the documented defaults
    shifted = np.roll(pixels, 1, axis=0)
    expected = _expected(shifted[:, 2:9, 1:7], 4, ndwi=0.0, ndvi=0.3, bare=0.1)
    np.testing.assert_array_equal(got, expected)
