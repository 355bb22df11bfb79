"""``segflow.open_mask``: one call from a real run's store to an xarray DataArray, checked
against rasterio's and nibabel's own view of the source (never against segflow's)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import zarr
from nibabel.affines import apply_affine

import segflow
from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.errors import UserError

CONFIGS = Path(__file__).parents[1] / "configs"


def test_a_raster_mask_comes_back_with_its_crs_transform_nodata_and_names(
        rgb_tif, tmp_path, dask_address):
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=256"])
    result = segment_image(str(rgb_tif), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    mask = segflow.open_mask(str(tmp_path / "out"))  # the root's only store
    with rasterio.open(rgb_tif) as src:
        crs, transform = src.crs, src.transform
        x0, y0 = src.xy(0, 0)  # the centre of the first pixel
    assert mask.rio.crs == crs and mask.rio.transform() == transform
    assert mask.rio.nodata == 255 and mask.attrs["_FillValue"] == 255
    assert (float(mask.x[0]), float(mask.y[0])) == pytest.approx((x0, y0))
    assert mask.attrs["flag_meanings"] == "background foreground"
    assert mask.attrs["class_names"] == {"0": "background", "1": "foreground"}
    np.testing.assert_array_equal(mask.values,
                                  zarr.open_array(result["output_uri"], path="0", mode="r")[:])

    coarse = segflow.open_mask(result["output_uri"], level=1)
    assert coarse.rio.transform() == transform * transform.scale(2)
    np.testing.assert_array_equal(coarse.values, mask.values[::2, ::2])
    with pytest.raises(UserError, match="no pyramid level 9"):
        segflow.open_mask(result["output_uri"], level=9)


def test_every_level_of_a_slide_mask_opens_in_micrometres(tmp_path, dask_address):
    slide = Path(__file__).parent / "data" / "cmu1_pyramid.tif"
    cfg = load_config(CONFIGS / "pathology.yaml", ["tiling.chunk=512"])  # level 1, ~1 µm/px
    result = segment_image(str(slide), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    mpp = zarr.open_group(result["output_uri"], mode="r").attrs["spatial"]["mpp"]
    levels = len(zarr.open_group(result["output_uri"], mode="r").attrs["ome"]["multiscales"][0]
                 ["datasets"])
    assert levels >= 3
    for level in range(levels):
        mask = segflow.open_mask(str(tmp_path / "out"), result["image_id"], level)
        assert mask.y.attrs["units"] == mask.x.attrs["units"] == "µm"
        assert "units" not in mask.attrs  # a plot's colour bar is "class id", not "[µm]"
        assert float(mask.x[1] - mask.x[0]) == pytest.approx(mpp * 2 ** level)
        assert mask.shape == zarr.open_array(result["output_uri"], path=str(level),
                                             mode="r").shape


def test_a_volume_mask_carries_its_voxel_to_ras_affine(head_nii, tmp_path, dask_address):
    # a smaller fit sample than the config's: the mask's grid does not depend on it
    cfg = load_config(CONFIGS / "mri.yaml", ["tiling.chunk=64", "model.params.fit_voxels=200000"])
    result = segment_image(str(head_nii), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    source = nib.load(head_nii)  # LAS: the mask's x axis runs the other way
    mask = segflow.open_mask(result["output_uri"])
    np.testing.assert_allclose(mask.attrs["affine"], nib.as_closest_canonical(source).affine)
    assert mask.dims == ("x", "y", "z") and mask.z.attrs["units"] == "mm"
    assert "grey_matter" in mask.attrs["flag_meanings"]
    # coordinates are RAS+ mm of voxel centres: the file's corners land where nibabel says
    far = np.array(source.shape) - 1
    for voxel in (np.zeros(3), far, np.array([far[0], 0, far[2]])):
        x, y, z = apply_affine(source.affine, voxel)
        cell = mask.sel(x=x, y=y, z=z, method="nearest", tolerance=1e-6)  # else KeyError
        assert cell.shape == ()


def test_a_root_with_several_masks_names_them(tmp_path):
    for name in ("a-00000000", "b-11111111"):
        (tmp_path / "masks" / f"{name}.zarr").mkdir(parents=True)
    with pytest.raises(UserError, match="2 mask stores under masks/ .*a-00000000, b-11111111"):
        segflow.open_mask(str(tmp_path))
