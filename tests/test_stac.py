"""STAC in and out: an item of 28.5 m and 57 m COGs with a cloud band, four overlapping tiles,
a STAC API (stac-fastapi-static on 127.0.0.1, its assets on moto's S3) searched by ``batch``
and ``watch``, and the STAC catalog of the results. References come from rasterio (WarpedVRT,
merge), pyproj and stac-pydantic, never from segflow (tests/data/stac/make_stac.py makes the
data from the real Landsat sample)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.merge import merge
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from segflow.flows.batch import run_batch, watch_prefix
from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import InputConfig, JobConfig, load_config
from segflow.tasks.errors import UserError
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.sources.registry import open_source
from segflow.testing.models import predict_chunked
from segflow.testing.readers import upload
from tests.data.stac.make_stac import OFFSET, SCALE, make_scene, make_tiles

REPO = Path(__file__).resolve().parents[1]
ASSETS = ["green", "red", "nir", "swir16"]  # model band order; nir and swir16 are 57 m
FILES = {"green": "B03.tif", "red": "B04.tif", "nir": "B08.tif", "swir16": "B11.tif"}
CLOUDS = [3, 8, 9, 10]  # Sentinel-2 SCL: shadow, cloud medium/high probability, cirrus
WATER = ["model.kind=index", "model.params.water_index=mndwi",
         "model.params.bands={green: 1, red: 2, nir: 3, swir1: 4}",
         f"input.assets=[{', '.join(ASSETS)}]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("stac")
    return {"scene": make_scene(out), "tiles": make_tiles(out), "out": out}


def _warped_whole(folder: Path, resampling: Resampling, window: Window | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The four bands warped by rasterio onto the red band's grid (the finest), whole or one
    window: DN values and the cells where every band is valid."""
    with rasterio.open(folder / FILES["red"]) as grid:
        crs, transform, width, height = grid.crs, grid.transform, grid.width, grid.height
    bands, valid = [], None
    for name in ASSETS:
        with rasterio.open(folder / FILES[name]) as ds, \
                WarpedVRT(ds, crs=crs, transform=transform, width=width, height=height,
                          resampling=resampling) as vrt:
            bands.append(vrt.read(1, window=window))
            ok = vrt.read_masks(1, window=window) > 0
        valid = ok if valid is None else valid & ok
    assert valid is not None
    return np.stack(bands), valid


def _model(cfg: JobConfig, bands: int, dtype: str) -> Any:
    return build_model(cfg, InputSpec(bands=bands, dtype=dtype, ndim=2), "test")


def _scl_on_grid(folder: Path) -> np.ndarray:
    with rasterio.open(folder / FILES["red"]) as grid, rasterio.open(folder / "SCL.tif") as ds, \
            WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                      height=grid.height, resampling=Resampling.nearest) as vrt:
        return vrt.read(1)


@pytest.fixture(scope="module")
def cloudy_run(data, tmp_path_factory, dask_address) -> dict[str, Any]:
    """One flow run: the item in 256-px chunks, nearest resampling, clouds masked, scaled."""
    overrides = [*WATER, "tiling.chunk=256", "tiling.halo=0", "input.apply_scale=true",
                 f"input.mask={{asset: scl, values: {CLOUDS}}}", "output.export=true"]
    cfg = load_config(overrides=overrides)
    root = tmp_path_factory.mktemp("cloudy")
    result = segment_image(str(data["scene"]), str(root), cfg.model_dump(mode="json"),
                           dask_address)
    return {"cfg": cfg, "root": root, "result": result,
            "mask": zarr.open_array(result["output_uri"], path="0", mode="r")[:]}


def test_chunked_item_equals_the_scene_warped_whole_first(data, cloudy_run):
    """Nearest: the 256-px chunked run's mask is the model on the whole stacked scene, cell
    for cell (57 m bands warped whole by rasterio, scale and offset applied, clouds nodata)."""
    folder = data["scene"].parent
    pixels, valid = _warped_whole(folder, Resampling.nearest)
    valid &= ~np.isin(_scl_on_grid(folder), CLOUDS)
    scaled = (pixels * np.float32(SCALE) + np.float32(OFFSET)).astype(np.float32)
    model = _model(cloudy_run["cfg"], 4, "float32")
    box = (slice(0, pixels.shape[1]), slice(0, pixels.shape[2]))
    expected = np.asarray(model.predict_at(scaled, valid, box, box))
    nodata = 255
    expected = np.where(valid, expected, nodata)
    mask = cloudy_run["mask"]
    assert mask.shape == valid.shape and len(cloudy_run["result"]["class_stats"]) == 4
    np.testing.assert_array_equal(mask, expected)
    assert (mask != nodata).sum() > 0.5 * mask.size and len(np.unique(mask)) == 5


def test_bilinear_chunks_differ_only_where_warping_by_window_does(data):
    """Bilinear at 256-px windows: segflow's chunks equal rasterio's own windowed warps, and
    differ from the whole-scene warp only where those windows do (the count is printed)."""
    folder = data["scene"].parent
    cfg = load_config(overrides=[*WATER, "input.resampling=bilinear"])
    source = open_source(str(data["scene"]), cfg.input)
    model = _model(cfg, 4, source.dtype)
    chunked = predict_chunked(model, source, 256, 0)
    whole, whole_valid = _warped_whole(folder, Resampling.bilinear)
    box = (slice(0, whole.shape[1]), slice(0, whole.shape[2]))
    reference = np.asarray(model.predict_at(whole, whole_valid, box, box))
    windowed = np.zeros_like(whole)
    windowed_valid = np.zeros_like(whole_valid)
    for r in range(0, whole.shape[1], 256):
        for c in range(0, whole.shape[2], 256):
            win = Window(c, r, min(256, whole.shape[2] - c), min(256, whole.shape[1] - r))
            part, ok = _warped_whole(folder, Resampling.bilinear, win)
            windowed[:, r:r + win.height, c:c + win.width] = part
            windowed_valid[r:r + win.height, c:c + win.width] = ok
            pixels, valid = source.read((slice(r, r + win.height), slice(c, c + win.width)))
            np.testing.assert_array_equal(pixels, part)
            np.testing.assert_array_equal(valid, ok)
    by_window = (windowed != whole).any(axis=0) | (windowed_valid != whole_valid)
    differs = (chunked != reference) & whole_valid
    print(f"\nbilinear: {by_window.sum()} of {by_window.size} cells differ between rasterio's "
          f"whole and windowed warps; {differs.sum()} mask cells differ, all among them")
    assert not (differs & ~by_window).any()
    assert by_window.sum() < 0.02 * by_window.size


def test_another_crs_and_a_bbox_give_the_grid_rasterio_warps_to(data):
    """``input.crs``, ``input.resolution`` and a WGS 84 ``input.bbox``: the grid has that CRS
    and cell, covers the bbox with cell edges on multiples of the cell (GDAL's -tap), and
    every window equals rasterio's WarpedVRT of each asset onto it (nearest)."""
    from rasterio.warp import transform_bounds

    bbox = [-78.74, 35.70, -78.66, 35.78]
    cfg = InputConfig(assets=["red", "nir"], crs="EPSG:32617", resolution=30.0, bbox=bbox)
    source = open_source(str(data["scene"]), cfg)
    west, south, east, north = transform_bounds("EPSG:4326", "EPSG:32617", *bbox,
                                                densify_pts=21)
    a, _, x0, _, e, y0 = source.transform
    height, width = source.spatial_shape
    assert (a, e) == (30.0, -30.0) and x0 % 30 == 0 and y0 % 30 == 0
    assert x0 <= west < x0 + 30 and y0 >= north > y0 - 30
    assert x0 + 30 * width >= east > x0 + 30 * (width - 1)
    assert y0 - 30 * height <= south < y0 - 30 * (height - 1)
    folder = data["scene"].parent
    for box in [(slice(0, height), slice(0, width)), (slice(40, 170), slice(25, 160))]:
        pixels, valid = source.read(box)
        window = Window.from_slices(*box)
        for band, name in enumerate(("red", "nir")):
            with rasterio.open(folder / FILES[name]) as ds, WarpedVRT(
                    ds, crs="EPSG:32617", transform=rasterio.Affine(*source.transform[:6]),
                    width=width, height=height, resampling=Resampling.nearest) as vrt:
                np.testing.assert_array_equal(pixels[band], vrt.read(1, window=window))
                assert not (valid & (vrt.read_masks(1, window=window) == 0)).any()


def test_qa_bits_flag_cells_as_numpy_says(data):
    """``input.mask.bits``: a cell is flagged when any named bit of the QA value is set (the
    SCL band read as bits here: bit 3 is set in 8, 9, 10 and 11)."""
    scl = _scl_on_grid(data["scene"].parent)
    source = open_source(str(data["scene"]), InputConfig(assets=["red"],
                                                         mask={"asset": "scl", "bits": [3]}))
    _, valid = source.read((slice(0, scl.shape[0]), slice(0, scl.shape[1])))
    flagged = (scl.astype(np.int64) >> 3) & 1 == 1
    assert flagged.any() and not valid[flagged].any()
    plain = open_source(str(data["scene"]), InputConfig(assets=["red"]))
    _, unmasked = plain.read((slice(0, scl.shape[0]), slice(0, scl.shape[1])))
    np.testing.assert_array_equal(valid, unmasked & ~flagged)


def test_resampling_per_asset_by_key_or_band_name(data):
    """``input.resampling`` as a mapping: by asset key (B11), by a band's common name (nir),
    else ``default``."""
    cfg = InputConfig(assets=ASSETS, resampling={"B11": "average", "nir": "bilinear",
                                                 "default": "cubic"})
    source = open_source(str(data["scene"]), cfg)
    assert [layer.resampling for layer in source.tiles[0].layers] == [  # type: ignore[attr-defined]
        "cubic", "cubic", "bilinear", "average"]


def test_stac_keys_on_a_geotiff_are_one_line(tmp_path):
    with pytest.raises(UserError) as error:
        open_source(str(REPO / "samples" / "nc_lsat7_2000_b12345.tif"),
                    InputConfig(assets=["red"], apply_scale=True))
    assert "input.assets, input.apply_scale apply to STAC items" in str(error.value)
    assert "\n" not in str(error.value)


def _collection(tiles: list[Path], folder: Path, order: list[int]) -> Path:
    """An ItemCollection of the tiles in ``order``, asset hrefs made absolute."""
    features = []
    for k in order:
        item = json.loads(tiles[k].read_text())
        for asset in item["assets"].values():
            asset["href"] = str(tiles[k].parent / asset["href"])
        features.append(item)
    path = folder / f"mosaic-{''.join(map(str, order))}.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _merged(tiles: list[Path], order: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """rasterio.merge, method "first", of each band over the tiles in ``order``."""
    bands = []
    for key in ("B04", "B03", "B02"):
        data, _ = merge([str(tiles[k].parent / f"{key}.tif") for k in order], method="first")
        bands.append(data[0])
    pixels = np.stack(bands)
    return pixels, (pixels != 0).all(axis=0)


@pytest.mark.parametrize("rule, order", [("first", [0, 1, 2, 3]),
                                         ("least_cloudy", [3, 2, 1, 0])])
def test_mosaic_of_four_tiles_equals_rasterio_merge(data, rule, order):
    """Tiles overlapping by 48 cells, each a different acquisition, tile 0 with a hole: read
    in 128-px windows, the mosaic is rasterio.merge's under the same rule (cloud cover 30, 20,
    10, 0 % for t0..t3, so least_cloudy merges them in reverse)."""
    path = _collection(data["tiles"], data["out"], [0, 1, 2, 3])
    source = open_source(path.as_posix(), InputConfig(mosaic=rule))
    expected, valid = _merged(data["tiles"], order)
    assert source.shape == expected.shape
    height, width = source.spatial_shape
    for r in range(0, height, 128):
        for c in range(0, width, 128):
            box = (slice(r, min(r + 128, height)), slice(c, min(c + 128, width)))
            pixels, ok = source.read(box)
            np.testing.assert_array_equal(ok, valid[box])
            np.testing.assert_array_equal(pixels[:, ok], expected[(slice(None), *box)][:, ok])
    # the rule decided cells: overlaps differ by rule, and the hole of tile 0 is filled
    assert (expected != _merged(data["tiles"], order[::-1])[0])[:, valid].any()
    assert valid.mean() > 0.8


def test_a_mosaic_runs_as_one_image(data, tmp_path, dask_address):
    """The ItemCollection as SOURCE (``segment``): one mask on the union grid, equal to the
    model on rasterio's merge."""
    path = _collection(data["tiles"], tmp_path, [0, 1, 2, 3])
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=160", "tiling.halo=0"])
    result = segment_image(str(path), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
    pixels, valid = _merged(data["tiles"], [0, 1, 2, 3])
    source = open_source(str(path), cfg.input)
    model = _model(cfg, 3, source.dtype)
    from segflow.tasks.runtime.cluster import client_for

    model.fit(source, client_for(dask_address))
    box = (slice(0, mask.shape[0]), slice(0, mask.shape[1]))
    expected = np.where(valid, np.asarray(model.predict_at(pixels, valid, box, box)), 255)
    np.testing.assert_array_equal(mask, expected)


def test_cloud_cells_are_nodata_and_left_out_of_fractions(data, cloudy_run):
    folder = data["scene"].parent
    scl = _scl_on_grid(folder)
    flagged = np.isin(scl, CLOUDS)
    mask, result = cloudy_run["mask"], cloudy_run["result"]
    assert (mask[flagged] == 255).all()
    assert result["cells_masked"] == int(flagged.sum()) > 0
    stats = result["class_stats"]
    assert sum(r["pixels"] for r in stats) == int((mask != 255).sum())
    assert abs(sum(r["fraction"] for r in stats) - 1.0) < 1e-9
    # a projected CRS in metres (pyproj says): area = cells x the affine's cell area, in ha
    with rasterio.open(folder / FILES["red"]) as ds:
        cell = abs(ds.transform.a * ds.transform.e)
        unit = CRS.from_user_input(ds.crs).axis_info[0].unit_conversion_factor
    for row in stats:
        assert row["area"] == pytest.approx(row["pixels"] * cell * unit ** 2 / 1e4, rel=1e-12)


# --- a STAC API, batch and watch ------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(catalog: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.stac_api", str(catalog), str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{url}/", timeout=2) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "no server")
    proc.kill()
    raise RuntimeError("the STAC API did not start")


def _publish(catalog_dir: Path, tiles: list[Path], bucket: str) -> Path:
    """A static STAC catalog (pystac) of the tiles, their assets on S3."""
    import pystac

    catalog = pystac.Catalog("segflow-test-api", "tiles on moto S3")
    collection = pystac.Collection(
        "segflow-tiles", "four overlapping Landsat tiles",
        pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]),
                      pystac.TemporalExtent([[None, None]])))
    catalog.add_child(collection)
    for path in tiles:
        href = upload(bucket, f"stac/{path.parent.name}", path.parent)
        item = pystac.Item.from_dict(json.loads(path.read_text()))
        for asset in item.assets.values():
            asset.href = f"{href}/{Path(asset.href).name}"
        collection.add_item(item)
    catalog.normalize_hrefs(str(catalog_dir))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return catalog_dir / "catalog.json"


@pytest.fixture(scope="module")
def stac_api(data, tmp_path_factory, s3_endpoint):
    import boto3

    bucket = "segflow-stac-api"
    boto3.client("s3").create_bucket(Bucket=bucket)
    folder = tmp_path_factory.mktemp("api")
    catalog = _publish(folder / "catalog", data["tiles"][:3], bucket)
    proc, url = _serve(catalog)
    yield {"url": url, "catalog": catalog, "bucket": bucket, "tiles": data["tiles"]}
    proc.terminate()
    proc.wait(timeout=10)


def test_batch_and_watch_over_a_stac_api_search(stac_api, tmp_path, dask_address):
    """A search with a CQL2 filter finds t1 and t2 (cloud cover < 25 %; t0 has 30 %): batch
    runs them; watch --once skips both; t3 (0 %) published between passes runs once."""

    search = (f"{stac_api['url']}/search?collections=segflow-tiles"
              "&filter=eo:cloud_cover<25&limit=10")
    out = str(tmp_path / "results")
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=128"]).model_dump(mode="json")
    rows = run_batch(search, out, cfg, dask_address)
    assert sorted(r["uri"].rsplit("/", 1)[-1] for r in rows) == ["t1.json", "t2.json"]
    assert {r["status"] for r in rows} == {"succeeded"}

    def once() -> dict[str, str]:
        found = watch_prefix(search, out, cfg, dask_address, interval=0, passes=1,
                             concurrency=2, emit_events=False, report=lambda rows: None)
        return {r["uri"].rsplit("/", 1)[-1]: r["status"] for r in found}

    assert once() == {"t1.json": "skipped", "t2.json": "skipped"}
    # a new scene arrives: its item file and the collection's link to it, nothing else touched
    tile = stac_api["tiles"][3]
    href = upload(stac_api["bucket"], f"stac/{tile.parent.name}", tile.parent)
    collection_dir = stac_api["catalog"].parent / "segflow-tiles"
    item = json.loads(tile.read_text())
    for asset in item["assets"].values():
        asset["href"] = f"{href}/{Path(asset['href']).name}"
    item["links"] = [{"rel": rel, "href": "../collection.json", "type": "application/json"}
                     for rel in ("collection", "parent")]
    (collection_dir / "t3").mkdir()
    (collection_dir / "t3" / "t3.json").write_text(json.dumps(item))
    doc = json.loads((collection_dir / "collection.json").read_text())
    doc["links"].append({"rel": "item", "href": "./t3/t3.json", "type": "application/json"})
    (collection_dir / "collection.json").write_text(json.dumps(doc))
    assert once() == {"t1.json": "skipped", "t2.json": "skipped", "t3.json": "succeeded"}
    assert once() == {"t1.json": "skipped", "t2.json": "skipped", "t3.json": "skipped"}
    runs = run_query(out, "select source_uri, status from runs").to_pylist()
    assert len(runs) == 3 and {r["status"] for r in runs} == {"succeeded"}
    _check_results_catalog(Path(out), {"t1", "t2", "t3"})


def _check_results_catalog(root: Path, ids: set[str]) -> None:
    """The results as STAC: valid (stac-pydantic, offline), read back by pystac unchanged,
    and found by a search of a STAC API serving them."""
    import pystac
    from stac_pydantic import Collection, Item

    collection_path = root / "stac" / "collection.json"
    Collection.model_validate(json.loads(collection_path.read_text()))
    collection = pystac.Collection.from_file(str(collection_path))
    items = list(collection.get_items())
    assert {i.id.rsplit("-", 1)[0] for i in items} == ids
    for item in items:
        doc = json.loads(Path(item.get_self_href() or "").read_text())
        Item.model_validate(doc)
        assert pystac.Item.from_dict(doc).to_dict(transform_hrefs=False) == doc  # round trip
        [derived] = [link.href for link in item.links if link.rel == "derived_from"]
        assert derived.endswith(f"{item.id.rsplit('-', 1)[0]}.json")
        mask = item.assets["mask"]
        assert mask.media_type == "application/vnd+zarr" and "data" in (mask.roles or [])
        assert (Path(item.get_self_href() or "").parent / mask.href).resolve().is_dir()
        classes = mask.extra_fields["classification:classes"]
        areas = {c["class_id"]: c["area"] for c in item.properties["segflow:classes"]}
        assert [c["value"] for c in classes] == sorted(areas)
    proc, url = _serve(collection_path)
    try:
        box = ",".join(map(str, collection.extent.spatial.bboxes[0]))
        with urllib.request.urlopen(f"{url}/search?bbox={box}&limit=50", timeout=30) as answer:
            found = json.loads(answer.read())
        assert {f["id"] for f in found["features"]} == {i.id for i in items}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_vrt_and_item_collection_batches(data, tmp_path, dask_address):
    """``batch`` takes an ItemCollection (one image per item) and lists .vrt files (a VRT
    written by GDAL's CreateCopy, through rasterio)."""
    from rasterio.shutil import copy

    path = _collection(data["tiles"], tmp_path, [0, 1])
    folder = tmp_path / "vrts"
    folder.mkdir()
    copy(data["tiles"][0].parent / "B04.tif", folder / "red.vrt", driver="VRT")
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=256"]).model_dump(mode="json")
    rows = run_batch(str(path), str(tmp_path / "items"), cfg, dask_address)
    assert [r["uri"].rsplit("#", 1)[-1] for r in rows] == ["t0", "t1"]
    assert {r["status"] for r in rows} == {"succeeded"}
    rows = run_batch(str(folder), str(tmp_path / "vrt-out"), cfg, dask_address)
    assert [(Path(r["uri"]).name, r["status"]) for r in rows] == [("red.vrt", "succeeded")]
