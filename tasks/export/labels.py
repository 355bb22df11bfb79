"""``output.export``: the mask as the label file desktop tools open, under ``ROOT/exports/``:
rasters a Cloud-Optimized GeoTIFF (QGIS), slides a pyramidal OME-TIFF (QuPath,
Fiji/Bio-Formats), volumes a NIfTI label map (ITK-SNAP, 3D Slicer, MRIcron) and, read from a
DICOM series, a DICOM SEG (PACS, OHIF, 3D Slicer).

Medical label maps follow the medical tools' convention, not the store's: 0 is background and
nodata, the classes are 1..n in class-id order (a class named ``background`` is 0 too); the
mapping is in the file's JSON sidecar (``<name>.json``) and its NIfTI description.

Each is written by one task on a worker, streamed from the Zarr store chunk by chunk or tile by
tile (a single file has a single writer), to a staged local file that appears whole.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import nibabel as nib
import numpy as np
import rasterio
import rasterio.shutil
import tifffile
import zarr
from rasterio.windows import Window

from segflow.tasks.colours import rgb
from segflow.tasks.config import ClassSpec
from segflow.tasks.errors import on_worker
from segflow.tasks.mask.store import SHARD_INNER, MaskStore
from segflow.tasks.plan.grid import Plan
from segflow.tasks.runtime.layout import OutputRoot
from segflow.tasks.runtime.storage import raster_env, staged, zarr_options
from segflow.tasks.runtime.zarr_nodes import array_at, read_cells
from segflow.tasks.sources.base import SourceBase
from segflow.tasks.sources.spatial import RasterRef, SlideRef, SpatialRef, VolumeRef

COG_BLOCK = 256  # GeoTIFF blocks, and overviews down to one block
#: OME-TIFF tiles: the store's inner chunk, so each tile reads one chunk, decoded once
OME_TILE = SHARD_INNER[2]
#: class names that medical label maps write as 0, with nodata
BACKGROUND = {"background", "nodata", "none"}


def export_labels(store: MaskStore, plan: Plan, fmt: str, root: str, image_id: str,
                  classes: list[ClassSpec], source: SourceBase) -> dict[str, Any]:
    """Write the label file of one mask in format ``fmt`` (runs on a worker); returns its
    ``outputs`` row."""
    uri = OutputRoot(root).export(image_id, fmt)
    with staged(uri) as path:
        if fmt == "dicom-seg":
            from segflow.tasks.export.dicom_seg import write_dicom_seg

            on_worker(write_dicom_seg, path, store, classes, source, medical_labels(classes))
        else:
            write = {"cog": _cog, "ome-tiff": _ome_tiff, "nifti": _nifti}[fmt]
            on_worker(write, path, store, plan, classes, source.spatial_ref())
    if fmt == "cog":  # the legend, in GDAL's PAM sidecar (GDAL, QGIS and ArcGIS read it)
        with staged(uri + ".aux.xml") as path:
            path.write_text(_legend(classes))
    if fmt == "nifti":  # what each value of the file means
        with staged(uri.removesuffix(".nii.gz") + ".json") as path:
            path.write_text(json.dumps(_sidecar(classes), indent=1) + "\n")
    return {"output": "export", "format": fmt, "uri": uri, "features": None}


def medical_labels(classes: list[ClassSpec]) -> dict[int, int]:
    """Each class id's value in a medical label map: 1..n in id order, 0 for a class named
    background (nodata is 0 as well)."""
    values, n = {}, 0
    for c in sorted(classes, key=lambda c: c.id):
        if c.name.lower() in BACKGROUND:
            values[c.id] = 0
        else:
            n += 1
            values[c.id] = n
    return values


def _sidecar(classes: list[ClassSpec]) -> dict[str, Any]:
    """The label map's legend: value -> name and colour, and the store's class id of each."""
    values = medical_labels(classes)
    labels: dict[str, dict[str, Any]] = {"0": {"name": "background",
                                               "note": "nodata and background"}}
    for c in classes:
        if values[c.id]:
            labels[str(values[c.id])] = {"name": c.name, "colour": c.colour,
                                         "segflow_class_id": c.id}
    return {"labels": labels}


def relabel(block: np.ndarray, values: dict[int, int], nodata: int) -> np.ndarray:
    """Store class ids to a medical label map's values (nodata and unknown ids to 0)."""
    lut = np.zeros(max(nodata, *values) + 1, np.uint16 if max(values.values(), default=0)
                   > 255 else np.uint8)
    for cid, value in values.items():
        lut[cid] = value
    return lut[block]


def _cog(path: Path, store: MaskStore, plan: Plan, classes: list[ClassSpec],
         ref: SpatialRef) -> None:
    """A tiled GeoTIFF written chunk by chunk, then GDAL's COG driver (overviews by nearest
    neighbour, so they hold class ids; IFDs and overviews ahead of the full resolution)."""
    labels = store.labels()
    height, width = labels.shape
    assert isinstance(ref, RasterRef), "a COG is written for rasters"
    georef = ref.georef
    # the intermediate file is scratch (the worker's temporary folder, not the output's
    # disk), PackBits: labels compress well with the cheapest codec, and it is read once
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1,
               "dtype": store.dtype, "nodata": store.nodata, "crs": georef.crs_wkt,
               "transform": georef.affine, "tiled": True, "blockxsize": COG_BLOCK,
               "blockysize": COG_BLOCK, "compress": "packbits", "BIGTIFF": "IF_SAFER"}
    # both files are local (raster_env: no boto3 session per open when AWS keys are set)
    with tempfile.TemporaryDirectory(prefix="segflow-cog-") as scratch, raster_env(scratch):
        base = Path(scratch) / "base.tif"
        with rasterio.open(base, "w", **profile) as dst:
            for chunk in plan.chunks:
                rows, cols = chunk.core
                dst.write(labels[chunk.core], 1, window=Window(cols.start, rows.start,
                                                               cols.stop - cols.start,
                                                               rows.stop - rows.start))
            dst.set_band_description(1, "class id")
            dst.update_tags(1, **{f"CLASS_{c.id}": c.name for c in classes})
        rasterio.shutil.copy(base, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=COG_BLOCK,
                             OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER",
                             NUM_THREADS=str(max(1, len(os.sched_getaffinity(0)))))


def _legend(classes: list[ClassSpec]) -> str:
    """GDAL's PAM XML for band 1: a palette and a name for each class id 0..max (ids no class
    has: transparent, no name). In the sidecar, not the TIFF: a TIFF colour map always has 256
    entries, which QGIS lists as 256 classes; nodata is the file's nodata value, not a class."""
    by_id = {c.id: c for c in classes}
    entries, names = [], []
    for i in range(max(by_id) + 1):
        c = by_id.get(i)
        r, g, b = rgb(c.colour) if c else (0, 0, 0)
        entries.append(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{255 if c else 0}"/>')
        names.append(f"<Category>{escape(c.name) if c else ''}</Category>")
    return ('<PAMDataset><PAMRasterBand band="1"><ColorInterp>Palette</ColorInterp>'
            f"<ColorTable>{''.join(entries)}</ColorTable>"
            f"<CategoryNames>{''.join(names)}</CategoryNames></PAMRasterBand></PAMDataset>\n")


def _levels(store: MaskStore) -> list[zarr.Array]:
    """The store's pyramid (OME-Zarr levels 0, 1, ...), as far as it was built."""
    group = zarr.open_group(store=store.uri, mode="r", **zarr_options(store.uri))
    found = [array_at(group, "0")]
    while str(len(found)) in group:
        found.append(array_at(group, str(len(found))))
    return found


def _tiles(level: zarr.Array, nodata: int) -> Iterator[np.ndarray]:
    """``level`` in square OME_TILE tiles, row by row, edge tiles padded with nodata
    (tifffile wants whole tiles); one tile in memory at a time."""
    height, width = level.shape
    for r in range(0, height, OME_TILE):
        for c in range(0, width, OME_TILE):
            tile = np.full((OME_TILE, OME_TILE), nodata, level.dtype)
            part = read_cells(level, np.s_[r:r + OME_TILE, c:c + OME_TILE])
            tile[:part.shape[0], :part.shape[1]] = part
            yield tile


def _ome_tiff(path: Path, store: MaskStore, plan: Plan, classes: list[ClassSpec],
              ref: SpatialRef) -> None:
    """A pyramidal OME-TIFF (the store's pyramid levels as SubIFDs; level 0 only when
    ``output.pyramid`` is off) with the physical pixel size of the level that was read."""
    levels = _levels(store)
    mpp = ref.mpp if isinstance(ref, SlideRef) else None
    # the legend in the OME Image's Description: class id -> name and colour, and nodata
    legend = {"labels": {str(c.id): {"name": c.name, "colour": c.colour} for c in classes},
              "nodata": store.nodata}
    metadata: dict[str, Any] = {"axes": "YX", "Name": "segflow labels",
                                "Description": json.dumps(legend),
                                "Channel": {"Name": ["class id"]}}
    if mpp:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm",
                        PhysicalSizeYUnit="µm")
    options: dict[str, Any] = {"tile": (OME_TILE, OME_TILE), "compression": "zlib",
                               "photometric": "minisblack", "dtype": levels[0].dtype}
    if levels[0].dtype == np.uint8:  # the class colours as the TIFF's palette (a LUT)
        options.update(photometric="palette", colormap=_palette(classes))
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for n, level in enumerate(levels):
            # each level's pixel size in the TIFF resolution tags too (pixels per cm), where
            # OpenSlide and tiffslide read a slide's MPP
            size: dict[str, Any] = {"resolution": (1e4 / (mpp * 2 ** n),) * 2,
                                    "resolutionunit": "CENTIMETER"} if mpp else {}
            first: dict[str, Any] = ({"subifds": len(levels) - 1, "metadata": metadata}
                                     if n == 0 else {"subfiletype": 1, "metadata": None})
            tif.write(_tiles(level, store.nodata), shape=level.shape, **first, **size,
                      **options)


def _palette(classes: list[ClassSpec]) -> np.ndarray:
    """A TIFF colour map (3, 256) uint16: each class's colour, grey elsewhere (nodata)."""
    colours = np.full((3, 256), 128 * 257, np.uint16)
    for c in classes:
        colours[:, c.id] = [v * 257 for v in rgb(c.colour)]
    return colours


def _nifti(path: Path, store: MaskStore, plan: Plan, classes: list[ClassSpec],
           ref: SpatialRef) -> None:
    """A gzipped NIfTI-1 label map on the source's own voxel grid and affine (sform and qform):
    the axes the reader turned round to ascend in RAS+ are turned back, so the file overlays
    its source voxel for voxel. Written slab by slab along the last axis in NIfTI's
    column-major order."""
    labels = store.labels()
    assert isinstance(ref, VolumeRef), "a NIfTI label map is written for volumes"
    affine = np.asarray(ref.source_affine, dtype=np.float64)
    flipped = list(ref.flipped)
    values = medical_labels(classes)
    dtype = relabel(np.zeros(1, np.uint8), values, store.nodata).dtype
    header = nib.Nifti1Header()
    header.set_data_shape(labels.shape)
    header.set_data_dtype(dtype)
    header.set_sform(affine, code="scanner")
    header.set_qform(affine, code="scanner")
    header.set_xyzt_units("mm")
    header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    header["intent_name"] = b"segflow labels"
    header["vox_offset"] = 352
    header["cal_min"], header["cal_max"] = 0, max(values.values(), default=0)
    legend = ", ".join(f"{values[c.id]} {c.name}" for c in classes if values[c.id])
    header["descrip"] = f"0 background, {legend}"[:79].encode()
    depth = labels.shape[2]
    step = plan.chunk
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(header.binaryblock)
        out.write(b"\0" * (352 - len(header.binaryblock)))  # no extensions
        for k in range(0, depth, step):
            stop = min(k + step, depth)
            slab = (np.flip(read_cells(labels, np.s_[:, :, depth - stop:depth - k]), 2)
                    if flipped[2] else read_cells(labels, np.s_[:, :, k:stop]))
            slab = relabel(np.flip(slab, tuple(a for a in (0, 1) if flipped[a])), values,
                           store.nodata)
            for z in range(slab.shape[2]):
                out.write(np.ascontiguousarray(slab[:, :, z].T).tobytes())
