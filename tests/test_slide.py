"""Whole-slide images: pixel size from the file, level by target resolution, areas in mm²,
background chunks skipped without changing the mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05 import ImageLabel

from segflow.flows.segment import segment_image
from segflow.tasks.config import InputConfig, load_config
from segflow.tasks.sources.registry import reader_for
from segflow.tasks.sources.slide import base_mpp, open_slide

DATA = Path(__file__).parent / "data"
CONFIGS = Path(__file__).parents[1] / "configs"


def test_pixel_size_and_level_come_from_the_file():
    path = str(DATA / "cmu1_pyramid.tif")
    assert reader_for(path).modality == "slide"
    full = open_slide(path)
    assert full.level == 0 and full.mpp == pytest.approx(0.499)
    assert full.spatial_shape == (2967, 2220)
    coarse = open_slide(path, InputConfig(target_mpp=1.0))
    assert coarse.level == 1 and coarse.mpp == pytest.approx(0.998, rel=1e-3)
    assert coarse.spatial_shape == (1484, 1110)
    pixels, valid = coarse.read((slice(100, 200), slice(50, 90)))
    expected = tifffile.imread(path, level=1)[100:200, 50:90]
    np.testing.assert_array_equal(np.moveaxis(pixels, 0, -1), expected)
    assert valid.all()
    assert open_slide(path, InputConfig(mpp=0.25)).mpp == 0.25  # input.mpp overrides the file


def test_aperio_description_gives_the_pixel_size(tmp_path):
    path = tmp_path / "aperio.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb",
                     description="Aperio Image Library v12 |AppMag = 20|MPP = 0.2520")
    with tifffile.TiffFile(path) as tif:
        assert base_mpp(tif) == pytest.approx(0.252)


def test_slide_areas_in_mm2_and_a_valid_ome_zarr(tmp_path, dask_address):
    cfg = load_config(CONFIGS / "pathology.yaml", ["tiling.chunk=512"])
    result = segment_image(str(DATA / "cmu1_pyramid.tif"), str(tmp_path / "out"),
                           cfg.model_dump(mode="json"), dask_address)
    assert result["modality"] == "slide"
    group = zarr.open_group(result["output_uri"], mode="r")
    mask = group["0"][:]
    assert mask.shape == (1484, 1110)  # level 1, read at ~1 µm/px
    mm2_per_pixel = (0.499 * 2) ** 2 / 1e6
    for row in result["class_stats"]:
        count = int((mask == row["class_id"]).sum())
        assert count > 0 and row["pixels"] == count and row["area_unit"] == "mm2"
        assert row["area"] == pytest.approx(count * mm2_per_pixel, rel=1e-9)
    multiscale = ImageLabel.from_zarr(group).attributes.ome.multiscales[0]
    assert [a.unit for a in multiscale.axes] == ["micrometer"] * 2
    assert len(multiscale.datasets) >= 2


def test_background_chunks_are_skipped_and_the_mask_is_unchanged(sparse_slide, tmp_path,
                                                                  dask_address):
    masks, results = [], []
    for skip in (True, False):
        cfg = load_config(CONFIGS / "pathology.yaml",
                          ["input.target_mpp=null", "tiling.chunk=256",
                           f"tiling.skip_empty={str(skip).lower()}", "model.params.tissue=0.08",
                           "model.params.positive=0.05", "output.pyramid=false"])
        result = segment_image(str(sparse_slide), str(tmp_path / f"out{skip}"),
                               cfg.model_dump(mode="json"), dask_address)
        results.append(result)
        masks.append(zarr.open_array(result["output_uri"], path="0", mode="r")[:])
    skipped, full = results
    assert skipped["chunks_total"] == 12 * 10
    assert skipped["chunks_skipped"] >= 60 and full["chunks_skipped"] == 0
    # each chunk counted once: glass chunks are skipped as "no tissue", not as nodata, and
    # not computed
    assert skipped["chunks_background"] == skipped["chunks_skipped"]
    assert skipped["chunks_nodata"] == full["chunks_background"] == 0
    assert skipped["chunks_computed"] == skipped["chunks_total"] - skipped["chunks_background"]
    assert full["chunks_computed"] == full["chunks_total"]
    agreement = (masks[0] == masks[1]).mean()
    assert agreement >= 0.9999
    assert (masks[0] == 1).sum() > 1e5  # there is tissue, and it was segmented


def test_one_slide_as_bif_dicom_and_tiff_gives_the_same_mask_and_mm2(tmp_path, dask_address):
    """The same real H&E levels as a Ventana BIF (OpenSlide), as its DICOM conversion by
    wsidicomizer (wsidicom) and as a tifffile pyramid: the same pixels, the same level for
    ``target_mpp``, the same ``configs/pathology.yaml`` mask and the same mm²."""
    from segflow.tasks.sources.registry import open_source
    from tests.data.slides.make_bif import half, make_bif
    from tests.data.slides.make_dicom_wsi import tiff_pyramid, to_dicom_wsi

    bif = tmp_path / "crop_bif.tif"  # BIFs are also named .tif: told apart by content
    crop = make_bif(str(DATA / "cmu1_pyramid.tif"), str(bif), size=1024, tile=256,
                    compression="deflate")
    tif = tiff_pyramid(tmp_path / "crop.tif", [crop, half(crop), half(half(crop))], mpp=0.499)
    dicom = tmp_path / "crop_dicom"
    to_dicom_wsi(tif, dicom)
    slides = {"openslide": bif, "dicom-wsi": dicom, "slide": tif}
    for name, path in slides.items():
        assert reader_for(str(path)).name == name
        source = open_source(str(path), InputConfig())
        np.testing.assert_array_equal(
            np.moveaxis(source.read((slice(0, 1024),) * 2)[0], 0, -1), crop)
    cfg = load_config(CONFIGS / "pathology.yaml", ["tiling.chunk=256"]).model_dump(mode="json")
    runs = {name: segment_image(str(path), str(tmp_path / name), cfg, dask_address)
            for name, path in slides.items()}
    masks = {name: zarr.open_array(r["output_uri"], path="0", mode="r")[:]
             for name, r in runs.items()}
    assert masks["slide"].shape == (512, 512)  # level 1: 0.998 µm/px for a 1 µm target
    assert len(np.unique(masks["slide"])) == 3  # glass, tissue, haematoxylin-positive
    for name in ("openslide", "dicom-wsi"):
        np.testing.assert_array_equal(masks[name], masks["slide"])
        assert [r["area"] for r in runs[name]["class_stats"]] == pytest.approx(
            [r["area"] for r in runs["slide"]["class_stats"]], rel=1e-12)
