"""tasks/models/histogram.py: the exact histogram of a Dask array and the Otsu thresholds from it,
against NumPy's histogram and scikit-image's thresholds of the same values held in memory."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from skimage.filters import threshold_multiotsu, threshold_otsu

from segflow.tasks.errors import UserError
from segflow.tasks.models.histogram import exact_histogram, multiotsu_thresholds, otsu_threshold


def _bimodal(seed: int = 0) -> np.ndarray:
    """uint8 values from two overlapping modes, as float64 with NaN for invalid cells (what
    ``SourceBase.to_dask`` yields), 120 x 90."""
    rng = np.random.default_rng(seed)
    values = np.where(rng.random((120, 90)) < 0.4, rng.normal(60, 15, (120, 90)),
                      rng.normal(170, 25, (120, 90)))
    values = np.clip(np.rint(values), 0, 255)
    values[rng.random(values.shape) < 0.1] = np.nan
    return values


def test_integer_bins_count_every_value_whatever_the_chunking(sync_client):
    values = _bimodal()
    valid = values[~np.isnan(values)].astype(int)
    expected = np.bincount(valid - valid.min())  # one bin per integer from min to max
    for chunks in ((120, 90), (32, 17), (7, 90)):
        counts, centres = exact_histogram(da.from_array(values, chunks=chunks), "uint8",
                                          sync_client, "x.tif")
        np.testing.assert_array_equal(counts, expected)
        np.testing.assert_array_equal(centres, np.arange(valid.min(), valid.max() + 1))


def test_float_values_get_1024_even_bins(sync_client):
    rng = np.random.default_rng(1)
    values = rng.normal(0, 1, (64, 64))
    counts, centres = exact_histogram(da.from_array(values, chunks=16), "float32", sync_client,
                                      "x.tif")
    expected, edges = np.histogram(values, bins=1024, range=(values.min(), values.max()))
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_allclose(centres, (edges[:-1] + edges[1:]) / 2)


def test_otsu_equals_skimage_on_the_valid_values(sync_client):
    values = _bimodal(2)
    got = otsu_threshold(da.from_array(values, chunks=(40, 30)), "uint8", sync_client, "x.tif")
    valid = values[~np.isnan(values)]
    # skimage over the integer values themselves: one bin per value between min and max
    counts = np.bincount(valid.astype(int) - int(valid.min()))
    centres = np.arange(valid.min(), valid.max() + 1)
    assert got == pytest.approx(threshold_otsu(hist=(counts, centres)))
    assert 60 < got < 170  # between the two modes
    assert got == pytest.approx(threshold_otsu(valid), abs=1.0)  # skimage's own 256 bins


def test_multiotsu_equals_skimage(sync_client):
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(m, 8, 3000) for m in (40, 120, 200)])
    values = np.clip(np.rint(values), 0, 255).reshape(90, 100)
    got = multiotsu_thresholds(da.from_array(values, chunks=45), "uint8", sync_client, "x.tif", 3)
    counts = np.bincount(values.astype(int).ravel() - int(values.min()))
    centres = np.arange(values.min(), values.max() + 1)
    assert got == pytest.approx(list(threshold_multiotsu(classes=3, hist=(counts, centres))))
    assert 40 < got[0] < 120 < got[1] < 200


def test_a_constant_image_puts_every_cell_in_the_background(sync_client):
    values = np.full((10, 10), 7.0)
    assert otsu_threshold(da.from_array(values), "uint8", sync_client, "x.tif") == 7.0
    assert threshold_otsu(values) == 7.0  # what skimage says for a constant array


def test_nothing_valid_or_too_few_values_are_one_line_errors(sync_client):
    with pytest.raises(UserError, match="no valid pixels"):
        otsu_threshold(da.from_array(np.full((4, 4), np.nan)), "uint8", sync_client, "x.tif")
    two = da.from_array(np.array([[1.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(UserError, match="too few distinct values to split into 3 classes"):
        multiotsu_thresholds(two, "uint8", sync_client, "x.tif", 3)
