"""Conformance of the classical methods on the real Landsat 7 sample (5 bands, nodata border).

Every method: a non-trivial mask, valid cells given ids of the table, the same mask bit for bit
for 16 chunks of 128 px (halo = receptive field) as for one whole-image chunk, and a one-line
error naming the source for a bad parameter. Chunk invariance is checked on arrays: the model
fitted on the session's cluster as a run fits it, then predicted chunk by chunk with its halo
as a worker does (``segflow.testing.predict_chunked``); the flow's own chunk path (store,
nodata, skipped chunks) is checked once, in tests/test_chunk_invariance.py.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.errors import SegflowError
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.models.filters import (
    filled_band,
    filtered_band,
    gradient_magnitude,
    gradient_radius,
)
from segflow.tasks.plan.grid import plan_chunks
from segflow.tasks.sources.registry import open_source
from segflow.testing import predict_chunked, predict_whole

SAMPLES = Path(__file__).parents[1] / "samples"
SCENE = SAMPLES / "nc_lsat7_2000_b12345.tif"
SPEC = InputSpec(bands=5, dtype="float32")

# kind -> (params, classes expected in the mask)
METHODS = {
    "multiotsu": (["model.params.band=4", "model.params.classes_k=3"], 3),
    "adaptive": (["model.params.band=4"], 2),
    "edges": (["model.params.band=4"], 2),
    "watershed": (["model.params.band=4"], 2),
}


@pytest.fixture
def landsat(tmp_path: Path) -> Path:
    dst = tmp_path / SCENE.name
    shutil.copy(SCENE, dst)
    return dst


def _segment(path: Path, root: Path, overrides: list[str], scheduler: str) -> tuple[np.ndarray,
                                                                                     dict]:
    cfg = load_config(overrides=overrides)
    result = segment_image(str(path), str(root), cfg.model_dump(mode="json"), scheduler)
    return zarr.open_array(result["output_uri"], path="0", mode="r")[:], result


def _valid() -> np.ndarray:
    with rasterio.open(SCENE) as src:
        return src.dataset_mask() > 0


def _receptive_field(overrides: list[str]) -> int:
    return build_model(load_config(overrides=overrides), SPEC, "scene").receptive_field


def _fit(overrides: list[str], client):
    """The model built and fitted on the session's cluster as a run does, and its source."""
    source = open_source(str(SCENE), load_config().input)
    model = build_model(load_config(overrides=overrides), SPEC, str(SCENE))
    model.fit(source, client)
    return model, source


@pytest.mark.parametrize("kind", sorted(METHODS))
def test_chunked_equals_whole_image(kind, client):
    """16 chunks of 128 px with halo = receptive field give the one-chunk mask bit for bit: the
    global fit does not depend on the chunk size and the seams are exact."""
    params, n_classes = METHODS[kind]
    model = [f"model.kind={kind}", *params]
    halo = _receptive_field(model)
    masks = {}
    for chunk in (128, 1024):
        fitted, source = _fit([*model, f"tiling.chunk={chunk}", f"tiling.halo={halo}"], client)
        plan = plan_chunks(source.spatial_shape, chunk, halo, fitted.stride)
        assert len(plan.chunks) == (16 if chunk == 128 else 1)
        assert fitted.identity().startswith(f"{kind}(")  # identity carries the fitted values
        masks[chunk] = (predict_chunked(fitted, source, chunk, halo), fitted.identity())
    assert masks[128][1] == masks[1024][1]  # the same fit
    valid = _valid()
    np.testing.assert_array_equal(masks[128][0][valid], masks[1024][0][valid])
    np.testing.assert_array_equal(masks[128][0][valid], predict_whole(fitted, source)[valid])

    mask = masks[128][0]
    assert (mask[valid] < n_classes).all()
    fractions = np.bincount(mask[valid], minlength=n_classes) / valid.sum()
    assert (fractions > 0.02).all(), fractions  # every class really present


def test_adaptive_too_small_halo_differs(client):
    """The equality above is not vacuous: a halo below the receptive field leaves seams."""
    model = ["model.kind=adaptive", "model.params.band=4"]
    halo = _receptive_field(model)
    assert halo == 32  # block 49: sigma 48/6, scipy's radius int(4 sigma + 0.5)
    fitted, source = _fit(model, client)
    whole = predict_whole(fitted, source)
    short = predict_chunked(fitted, source, 128, halo // 3)
    valid = _valid()
    assert (whole[valid] != short[valid]).sum() > 50


def test_index_finds_water_and_vegetation(landsat, tmp_path, dask_address):
    """On raw digital numbers (hazy blue/green), water and vegetation agree with the scene's
    own land-cover map, landclass96 (6 water; 3, 4, 5 herbaceous, shrubland, forest)."""
    mask, result = _segment(landsat, tmp_path / "out",
                            ["model.kind=index", "model.params.ndwi=0.3", "model.params.ndvi=0.1",
                             "model.params.bare=0.0", "tiling.chunk=256"], dask_address)
    assert [c["class_name"] for c in result["class_stats"]] == ["other", "water", "vegetation",
                                                                "bare"]
    with rasterio.open(SAMPLES / "nc_landclass96.tif") as src:
        truth = src.read(1)
    valid = _valid()
    water, true_water = (mask == 1) & valid, (truth == 6) & valid
    precision = (water & true_water).sum() / water.sum()
    recall = (water & true_water).sum() / true_water.sum()
    print(f"water precision {precision:.2f}, recall {recall:.2f}")  # README's figures (-s)
    assert precision > 0.5
    assert recall > 0.5
    vegetation = (mask == 2) & valid
    assert vegetation.sum() / valid.sum() > 0.2
    assert (vegetation & np.isin(truth, [3, 4, 5])).sum() / vegetation.sum() > 0.75
    assert (mask[~valid] == 255).all()


def test_fit_pass_gradient_equals_whole_image_filter():
    """The edges fit filters the image as overlapping Dask blocks; at 100 px (25 blocks) it
    equals one whole-image filter, the image border included."""
    source = open_source(str(SCENE), load_config().input)
    pixels, valid = source.read((slice(0, 443), slice(0, 489)))
    whole = gradient_magnitude(filled_band(pixels, valid, 4, 70.0), 1.5)
    blocks = filtered_band(source, 4, 70.0, partial(gradient_magnitude, sigma=1.5),
                           gradient_radius(1.5), chunk=100).compute(scheduler="sync")
    np.testing.assert_array_equal(blocks[valid], whole[valid])
    assert np.isnan(blocks[~valid]).all()


def _fitted_whole(kind: str, source, client):
    """The model fitted on the real cluster and its prediction for the whole scene at once."""
    model = build_model(load_config(overrides=[f"model.kind={kind}", "model.params.band=4"]),
                        SPEC, str(SCENE))
    model.fit(source, client)
    pixels, valid = source.read((slice(0, 443), slice(0, 489)))
    return model, pixels, valid, model.predict(pixels, valid, (slice(None), slice(None)))


def test_hole_filling_and_flooding_do_work(client):
    """Not vacuous: edges fills real holes, and the watershed flood decides many uncertain cells
    otherwise than the per-pixel fallback would."""
    source = open_source(str(SCENE), load_config().input)
    model, pixels, valid, regions = _fitted_whole("edges", source, client)
    band = filled_band(pixels, valid, 4, model.fill)
    edges = (gradient_magnitude(band, model.sigma) > model.value) & valid
    assert (regions.astype(bool) >= edges).all() and (regions.astype(bool) & ~edges).sum() > 500

    model, pixels, valid, classes = _fitted_whole("watershed", source, client)
    low, high = model.bounds
    band = filled_band(pixels, valid, 4, model.fill)
    uncertain = valid & (band >= low) & (band <= high)
    per_pixel = band > (low + high) / 2
    assert (classes[uncertain] != per_pixel[uncertain]).sum() > 0.02 * uncertain.sum()
    assert (classes[valid & (band < low)] == 0).all()
    assert (classes[valid & (band > high)] == 1).all()


@pytest.mark.parametrize("overrides, source, reason", [
    (["model.kind=multiotsu", "model.params.classes_k=1"], "config", "classes_k=1"),
    (["model.kind=multiotsu", "model.params.band=6"], "scene.tif",
     "band=6 but the input has 5 bands"),
    (["model.kind=adaptive", "model.params.block_size=50"], "config", "block_size=50"),
    (["model.kind=adaptive", "model.params.method=median"], "config", "method='median'"),
    (["model.kind=edges", "model.params.sigma=-1"], "config",
     "sigma=-1: Input should be greater than or equal to 0"),
    (["model.kind=watershed", "model.params.max_extent=0"], "config",
     "max_extent=0: Input should be greater than or equal to 1"),
    (["model.kind=watershed", "model.params.low=10"], "config", "low and high go together"),
    (["model.kind=watershed", "model.params.low=10", "model.params.high=5"], "config",
     "must be below"),
    (["model.kind=index", "model.params.bands.nir=7"], "scene.tif",
     "bands.nir=7 but the input has 5"),
    (["model.kind=index", "model.params.bands.blue=1"], "config", "bands.blue: unknown key"),
])
def test_bad_params_are_one_line_errors(overrides, source, reason):
    """A bad value of the params alone is a config error, found when the config is read
    (before any image is opened); one that needs the input names the source."""
    with pytest.raises(SegflowError) as err:
        build_model(load_config(overrides=overrides), SPEC, "scene.tif")
    assert err.value.source == source and reason in err.value.reason
    assert "\n" not in str(err.value)


def test_index_needs_its_bands():
    """An RGB input has no NIR band: said plainly, not an IndexError on a worker."""
    with pytest.raises(SegflowError, match="bands.nir=4 but the input has 3 bands"):
        build_model(load_config(overrides=["model.kind=index"]), InputSpec(3, "uint8"), "rgb.tif")
