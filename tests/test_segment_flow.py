"""A real Prefect flow run on a real Dask LocalCluster on a real GeoTIFF, checked end to end."""

from __future__ import annotations

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config


def test_flow_on_real_geotiff_with_default_local_cluster(rgb_tif, tmp_path):
    """No scheduler given: the flow starts its own LocalCluster, as a laptop user runs it."""
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=256", "cluster.n_workers=1"])
    result = segment_image(str(rgb_tif), str(tmp_path / "out"), cfg.model_dump(mode="json"))

    assert result["status"] == "succeeded"
    group = zarr.open_group(result["output_uri"], mode="r")
    meta = group.attrs["segflow"]
    assert meta["complete"] is True
    assert meta["source_checksum"].startswith("sha256:")
    labels = group["0"][:]

    with rasterio.open(rgb_tif) as src:
        valid = src.dataset_mask() > 0
        band = src.read(1).astype(float)
        profile_crs, transform = src.crs, src.transform
    threshold = meta["fitted"]["value"]
    # Independent re-computation of the mask from the fitted threshold.
    expected = np.where(valid, (band > threshold).astype(np.uint8), 255)
    np.testing.assert_array_equal(labels, expected)
    assert 0 < labels[valid].mean() < 1  # both classes present: a real segmentation

    # Corner chunks of the rotated footprint are all nodata: skipped and counted.
    assert result["chunks_total"] == 12 and result["chunks_skipped"] >= 1
    pixels = {r["class_name"]: r["pixels"] for r in result["class_stats"]}
    assert pixels == {"background": int((expected == 0).sum()),
                      "foreground": int((expected == 1).sum())}

    # xarray + rioxarray read the CRS and transform back without segflow.
    # Levels 1.. share level 0's dimension names (NGFF requires it) at other sizes: drop them.
    others = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"][1:]]
    assert others == ["1", "2"]
    ds = xr.open_zarr(result["output_uri"], consolidated=False, mask_and_scale=False,
                      drop_variables=others)
    da = ds["0"]
    assert da.rio.crs == profile_crs
    assert da.rio.transform().almost_equals(transform)
    np.testing.assert_array_equal(da.values, labels)


def test_store_is_sharded_one_shard_per_chunk(textured_tif, tmp_path, dask_address):
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=1024"])
    result = segment_image(str(textured_tif), str(tmp_path / "out"),
                           cfg.model_dump(mode="json"), dask_address)
    arr = zarr.open_array(result["output_uri"], path="0", mode="r")
    assert arr.shards == (1024, 1024) and arr.chunks == (512, 512)
    assert result["chunks_total"] == 4
