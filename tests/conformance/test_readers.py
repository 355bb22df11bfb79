"""Every registered reader, local and on S3, passes ``ReaderContract``."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import rasterio
import SimpleITK as sitk
import tifffile
import zarr
from nibabel.affines import apply_affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from segflow.tasks.sources.registry import readers
from segflow.testing import ReaderContract
from segflow.testing.readers import upload
from tests.conftest import DATA
from tests.data.dicom.make_dicom import ras_image, read_series, write_series
from tests.data.microscopy.make_ome import read as read_ome
from tests.data.slides.make_bif import half, make_bif
from tests.data.slides.make_dicom_wsi import tiff_pyramid, to_dicom_wsi
from tests.data.stac.make_stac import make_scene

SCENE = DATA / "rgb_byte.tif"  # real Landsat RGB, nodata 0 around a rotated footprint
SLIDE = DATA / "cmu1_pyramid.tif"  # real H&E (CMU-1), pyramidal, 0.499 µm/px
HEAD = DATA / "nibabel_anatomical.nii"  # real T1, big-endian, LAS
FLUORESCENCE = DATA / "vectra_crop.ome.tif"  # real DAPI, FITC, Cy3 (Vectra), 0.4965 µm/px
WINDOW = Window(0, 100, 240, 200)  # a crop of the scene: 46 % nodata outside the footprint


def _truncated(path: Path, folder: Path) -> Path:
    bad = folder / path.name
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return bad


class _GeoTiff(ReaderContract):
    reader_name = "geotiff"
    suffix = ".tif"
    windows = [(slice(10, 90), slice(30, 200)), (slice(150, 200), slice(0, 240))]
    driver = "GTiff"

    def make(self, folder: Path) -> Path:
        with rasterio.open(SCENE) as src:
            data = src.read(window=WINDOW)
            profile = {**src.profile, "width": WINDOW.width, "height": WINDOW.height,
                       "transform": src.window_transform(WINDOW), "driver": self.driver}
        if self.driver == "COG":
            profile = {k: v for k, v in profile.items()
                       if k not in ("tiled", "blockxsize", "blockysize", "interleave")}
            profile.update(blocksize=64, overview_count=1)
        path = folder / f"scene{self.suffix}"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

    def expected(self, path: Path) -> dict[str, Any]:
        with rasterio.open(path) as ds:
            pixels = ds.read()
            nodata = ds.nodata
            corners = {(0, 0): ds.xy(0, 0), (199, 239): ds.xy(199, 239)}
        return {"pixels": pixels, "valid": (pixels != nodata).any(axis=0),
                "physical": corners}

    def corrupt(self, path: Path, folder: Path) -> Path:
        return _truncated(path, folder)


class _Cog(_GeoTiff):
    driver = "COG"


class _Slide(ReaderContract):
    reader_name = "slide"
    suffix = ".tif"
    windows = [(slice(600, 900), slice(400, 700)), (slice(2900, 2967), slice(2000, 2220))]

    def make(self, folder: Path) -> Path:
        return Path(shutil.copy(SLIDE, folder / "slide.tif"))

    def expected(self, path: Path) -> dict[str, Any]:
        with tifffile.TiffFile(path) as tif:
            pixels = np.moveaxis(tif.series[0].levels[0].asarray(), -1, 0)
            page = tif.pages[0]
            numerator, denominator = page.tags["XResolution"].value
            assert page.tags["ResolutionUnit"].value == 3  # per centimetre
            mpp = 1e4 * denominator / numerator
        cells = [(0, 0), (2966, 2219), (100, 7)]
        return {"pixels": pixels, "valid": np.ones(pixels.shape[1:], bool),
                "physical": {c: ((c[1] + 0.5) * mpp, (c[0] + 0.5) * mpp) for c in cells}}

    def corrupt(self, path: Path, folder: Path) -> Path:
        return _truncated(path, folder)


class _VendorSlide(ReaderContract):
    """A Ventana BIF written from the real H&E (lossless tiles), read as OpenSlide reads it."""

    reader_name = "openslide"
    suffix = ".bif"
    windows = [(slice(100, 300), slice(250, 400)), (slice(500, 512), slice(0, 512))]

    def make(self, folder: Path) -> Path:
        path = folder / "slide.bif"
        make_bif(str(SLIDE), str(path), size=512, tile=128, compression="deflate")
        return path

    def expected(self, path: Path) -> dict[str, Any]:
        import openslide

        with openslide.OpenSlide(path) as slide:
            rgba = np.asarray(slide.read_region((0, 0), 0, slide.level_dimensions[0]))
            mpp = float(slide.properties["openslide.mpp-x"])
        cells = [(0, 0), (511, 511), (100, 7)]
        return {"pixels": np.moveaxis(rgba[..., :3], -1, 0), "valid": rgba[..., 3] > 0,
                "physical": {c: ((c[1] + 0.5) * mpp, (c[0] + 0.5) * mpp) for c in cells}}

    def corrupt(self, path: Path, folder: Path) -> Path:
        return _truncated(path, folder)


class _DicomWsi(ReaderContract):
    """A DICOM slide converted by wsidicomizer from a pyramid of the real H&E (level 0
    lossless), read as wsidicom reads it."""

    reader_name = "dicom-wsi"
    suffix = ""  # a folder (an S3 prefix)
    windows = [(slice(100, 300), slice(250, 400)), (slice(500, 512), slice(0, 512))]

    def make(self, folder: Path) -> Path:
        with tifffile.TiffFile(SLIDE) as tif:
            crop = np.ascontiguousarray(tif.series[0].levels[0].asarray()[1280:1792, 768:1280])
        pyramid = tiff_pyramid(folder / "crop.tif", [crop, half(crop), half(half(crop))],
                               mpp=0.499)
        to_dicom_wsi(pyramid, folder / "slide")
        return folder / "slide"

    def expected(self, path: Path) -> dict[str, Any]:
        from wsidicom import WsiDicom

        with WsiDicom.open(path) as slide:
            size = slide.levels[0].size
            rgb = np.asarray(slide.read_region((0, 0), 0, (size.width, size.height)))
            mpp = float(slide.levels[0].mpp.width)
        cells = [(0, 0), (511, 511), (100, 7)]
        return {"pixels": np.moveaxis(rgb, -1, 0), "valid": np.ones(rgb.shape[:2], bool),
                "physical": {c: ((c[1] + 0.5) * mpp, (c[0] + 0.5) * mpp) for c in cells}}

    def corrupt(self, path: Path, folder: Path) -> Path:
        bad = Path(shutil.copytree(path, folder / path.name))
        base = max(bad.iterdir(), key=lambda f: f.stat().st_size)  # level 0
        _truncated(base, bad)
        return bad


class _Microscopy(ReaderContract):
    """Three real fluorescence channels (DAPI, FITC, Cy3) in a tiled OME-TIFF, read by bioio;
    pixels and pixel size as tifffile reads them."""

    reader_name = "bioio"
    suffix = ".ome.tif"
    windows = [(slice(100, 200), slice(250, 384)), (slice(0, 256), slice(128, 129))]

    def make(self, folder: Path) -> Path:
        return Path(shutil.copy(FLUORESCENCE, folder / "cells.ome.tif"))

    def expected(self, path: Path) -> dict[str, Any]:
        pixels, _, um = read_ome(path)
        cells = [(0, 0), (255, 383), (100, 7)]
        return {"pixels": pixels, "valid": np.ones(pixels.shape[1:], bool),
                "physical": {c: ((c[1] + 0.5) * um, (c[0] + 0.5) * um) for c in cells}}

    def corrupt(self, path: Path, folder: Path) -> Path:
        return _truncated(path, folder)


class _Nifti(ReaderContract):
    reader_name = "nifti"
    suffix = ".nii"
    windows = [(slice(5, 20), slice(10, 30), slice(0, 25)), (slice(30, 33), slice(0, 41),
                                                           slice(3, 4))]

    def make(self, folder: Path) -> Path:
        path = folder / f"head{self.suffix}"
        if self.suffix == ".nii.gz":
            with HEAD.open("rb") as src, gzip.open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy(HEAD, path)
        return path

    def expected(self, path: Path) -> dict[str, Any]:
        # the reader presents every axis ascending in RAS+ (the LAS file's x reversed), as
        # nibabel's closest canonical image does
        img = nib.as_closest_canonical(nib.load(path))
        voxels = np.asarray(img.dataobj)
        voxels = voxels.astype(voxels.dtype.newbyteorder("="))[None]
        cells = [(0, 0, 0), (32, 40, 24), (10, 3, 17)]
        return {"pixels": voxels, "valid": np.ones(voxels.shape[1:], bool),
                "physical": {c: apply_affine(img.affine, c) for c in cells}}

    def corrupt(self, path: Path, folder: Path) -> Path:
        bad = folder / path.name
        bad.write_bytes(b"\0" * 100)
        return bad


class _NiftiGz(_Nifti):
    suffix = ".nii.gz"


SCALE, SHIFT = [2.0, 3.0, 4.0], [10.0, -20.0, 30.0]


class _ZarrVolume(ReaderContract):
    reader_name = "zarr"
    suffix = ".zarr"
    windows = [(slice(3, 30), slice(0, 9), slice(4, 5)), (slice(0, 33), slice(20, 41),
                                                         slice(10, 25))]

    def make(self, folder: Path) -> Path:
        """An OME-Zarr (NGFF 0.5) image of the T1 volume with its own scale and translation."""
        voxels = np.asarray(nib.load(HEAD).dataobj)
        voxels = voxels.astype(voxels.dtype.newbyteorder("="))
        path = folder / "head.zarr"
        group = zarr.open_group(store=str(path), mode="w", zarr_format=3)
        group.create_array("0", shape=voxels.shape, chunks=(16, 16, 16), dtype=voxels.dtype)[:] \
            = voxels
        group.attrs["ome"] = {"version": "0.5", "multiscales": [{
            "axes": [{"name": a, "type": "space", "unit": "millimeter"} for a in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": SCALE},
                {"type": "translation", "translation": SHIFT}]}]}]}
        return path

    def expected(self, path: Path) -> dict[str, Any]:
        voxels = zarr.open_array(store=str(path), path="0", mode="r")[:]
        cells = [(0, 0, 0), (32, 40, 24), (10, 3, 17)]
        # NGFF: a voxel's centre sits at its integer index, scaled then translated
        return {"pixels": voxels[None], "valid": np.ones(voxels.shape, bool),
                "physical": {c: np.asarray(c) * SCALE + SHIFT for c in cells}}

    def corrupt(self, path: Path, folder: Path) -> Path:
        bad = Path(shutil.copytree(path, folder / path.name))
        (bad / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                   "attributes": {"ome": "not metadata"}}))
        return bad


class _Stac(ReaderContract):
    """A STAC item of per-band COGs at two resolutions (tests/data/stac/make_stac.py), its
    relative asset hrefs beside it, locally or on S3; the truth is each asset warped whole
    onto the finest band's grid by rasterio (nearest)."""

    reader_name = "stac"
    suffix = ".json"
    windows = [(slice(10, 90), slice(30, 200)), (slice(301, 442), slice(0, 488))]

    def make(self, folder: Path) -> Path:
        return make_scene(folder)

    def _place(self, path: Path, request: pytest.FixtureRequest) -> str:
        if self.location == "local":
            return str(path)
        bucket = request.getfixturevalue("s3_bucket")
        return f"{upload(bucket, path.parent.name, path.parent)}/{path.name}"

    def expected(self, path: Path) -> dict[str, Any]:
        item = json.loads(path.read_text())
        files = [path.parent / a["href"] for k, a in item["assets"].items() if k != "scl"]
        with rasterio.open(files[0]) as grid:
            crs, transform, width, height = grid.crs, grid.transform, grid.width, grid.height
        pixels, valid = [], np.ones((height, width), bool)
        for file in files:
            with rasterio.open(file) as ds, WarpedVRT(ds, crs=crs, transform=transform,
                                                      width=width, height=height) as vrt:
                pixels.append(vrt.read(1))
                valid &= vrt.read_masks(1) > 0
        centre = transform @ (0.5, 0.5), transform @ (487.5, 441.5)
        return {"pixels": np.stack(pixels), "valid": valid,
                "physical": {(0, 0): centre[0], (441, 487): centre[1]}}

    def corrupt(self, path: Path, folder: Path) -> Path:
        bad = folder / path.name
        bad.write_text(path.read_text()[: len(path.read_text()) // 2])
        return bad


class _DicomSeries(ReaderContract):
    """The real T1 as an MR series written by SimpleITK (int16, rescaled, shuffled names),
    checked against SimpleITK's own reading of the series."""

    reader_name = "dicom"
    suffix = ""  # a folder (an S3 prefix)
    windows = [(slice(5, 20), slice(10, 30), slice(0, 25)), (slice(30, 33), slice(0, 41),
                                                           slice(3, 4))]

    def make(self, folder: Path) -> Path:
        img = nib.load(HEAD)
        voxels = np.asarray(img.dataobj, np.float64)
        path = folder / "head"
        write_series(ras_image(voxels, img.affine), path / "series")
        if self.suffix == ".zip":
            return Path(shutil.make_archive(str(path), "zip", path))
        return path

    def expected(self, path: Path) -> dict[str, Any]:
        if self.suffix == ".zip":
            shutil.unpack_archive(path, path.with_suffix(""))
            path = path.with_suffix("")
        image = read_series(path / "series")
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
        lps[:3, 3] = image.GetOrigin()
        voxels = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (column, row, slice)
        img = nib.as_closest_canonical(nib.Nifti1Image(voxels, np.diag([-1, -1, 1, 1]) @ lps))
        cells = [(0, 0, 0), (32, 40, 24), (10, 3, 17)]
        return {"pixels": np.asarray(img.dataobj)[None],
                "valid": np.ones(voxels.shape, bool),
                "physical": {c: apply_affine(img.affine, c) for c in cells}}

    def corrupt(self, path: Path, folder: Path) -> Path:
        if self.suffix == ".zip":
            return _truncated(path, folder)
        bad = Path(shutil.copytree(path, folder / path.name))
        victim = sorted((bad / "series").iterdir())[3]
        _truncated(victim, victim.parent)
        return bad


class _DicomZip(_DicomSeries):
    suffix = ".zip"


IMPLEMENTATIONS: list[type[ReaderContract]] = [_GeoTiff, _Cog, _Slide, _VendorSlide, _DicomWsi,
                                               _Microscopy, _Nifti, _NiftiGz, _ZarrVolume,
                                               _Stac, _DicomSeries, _DicomZip]


# every implementation, on local disk and on the moto S3 server: TestGeoTiff, TestGeoTiffOnS3, ...
for _impl in IMPLEMENTATIONS:
    for _where, _tail in (("local", ""), ("s3", "OnS3")):
        _name = f"Test{_impl.__name__.lstrip('_')}{_tail}"
        globals()[_name] = type(_name, (_impl,), {"location": _where})


def test_every_registered_reader_and_suffix_is_covered_local_and_on_s3():
    """A reader added to the registry without a contract subclass, locally and on S3, fails."""
    tested = [c for c in globals().values()
              if isinstance(c, type) and issubclass(c, ReaderContract) and c.__name__[:4] == "Test"]
    for reader in (r for r in readers().values() if r.opener.startswith("segflow.")):
        for location in ("local", "s3"):
            assert any(c.reader_name == reader.name and c.location == location for c in tested), \
                f"{reader.name} has no {location} conformance test"
    suffixes = {(c.reader_name, c.suffix) for c in tested}
    for reader in (r for r in readers().values() if r.opener.startswith("segflow.")):
        named = [s for s in reader.suffixes if (reader.name, s) in suffixes]
        assert named or not reader.suffixes, f"{reader.name}: none of {reader.suffixes} is tested"
