"""Whole-slide image reader (SVS, pyramidal/generic tiled TIFF, OME-TIFF) with tifffile.

Each window is read through tifffile's Zarr view of one pyramid level, which decodes only the
tiles the window touches (on S3 or any fsspec URL: range reads of about those tiles); the level
is chosen by a target resolution in µm per pixel, and its pixel size comes from the file's own
metadata (Aperio ``MPP =``, OME-XML ``PhysicalSizeX``, or the TIFF resolution tags with their
unit).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import tifffile
import zarr

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError, io_error, is_transient
from segflow.tasks.runtime.storage import open_input
from segflow.tasks.sources.base import Box, SourceBase, select_bands
from segflow.tasks.sources.spatial import SlideRef

_UM_PER = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "micron": 1.0, "mm": 1e3, "cm": 1e4}


def is_slide(uri: str) -> bool:
    """A TIFF without georeferencing that is SVS, OME or a pyramid (read from the header only,
    on any URL): what tells a slide from a raster when both readers match the name."""
    try:
        with open_input(uri) as fh, tifffile.TiffFile(fh) as tif:
            if tif.is_geotiff or tif.is_bif:  # a Ventana BIF's tiles overlap: OpenSlide's
                return False
            if tif.is_ome:  # RGB; other OME images are microscopy, bioio's
                return tif.series[0].axes.endswith("S")
            return bool(tif.is_svs or len(tif.series[0].levels) > 1)
    except Exception as exc:
        if is_transient(exc):  # the header could not be fetched: no answer, so retry
            raise io_error(uri, "cannot read the TIFF header", exc) from exc
        return False  # not a TIFF tifffile can parse: let the raster reader say why


def _read_level(uri: str, level: int, index: tuple[slice, ...]) -> np.ndarray:
    """``index`` of one pyramid level; the file (local or any fsspec URL) is opened for this
    read only, so a worker never holds a handle between reads and none is ever pickled."""
    with open_input(uri) as fh, tifffile.imread(fh, aszarr=True, level=level, series=0) as tiles:
        node = zarr.open(tiles, mode="r")
        if not isinstance(node, zarr.Array):  # one level of one series is an array
            raise TypeError(f"level {level} of {uri} is not an array")
        return np.asarray(node[index])


@dataclass(frozen=True)
class Slide(SourceBase):
    """One pyramid level of a slide, read as RGB(A) bands, with its true pixel size."""

    level: int = 0
    downsample: float = 1.0
    mpp: float | None = None  # µm per pixel at this level; None when the file does not say
    #: decimation of each coarser pyramid level relative to this one, for cheap samples
    coarser: tuple[tuple[int, float], ...] = ()

    reader: ClassVar[str] = "slide"
    modality: ClassVar[str] = "slide"
    base_unit: ClassVar[str] = "um2"
    supports_tissue_thumbnail: ClassVar[bool] = True

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        try:
            data = _read_level(self.uri, self.level, (*box, slice(None)))
        except Exception as exc:  # tifffile/imagecodecs raise many kinds on bad tiles
            raise io_error(self.uri, f"cannot read tiles at level {self.level}", exc) from exc
        pixels = np.moveaxis(data, -1, 0)[[b - 1 for b in self.bands]]
        return pixels, np.ones(pixels.shape[1:], bool)

    def read_level(self, level: int) -> np.ndarray:
        """A whole (small, coarse) pyramid level as (bands, h, w): for tissue detection."""
        try:
            data = _read_level(self.uri, level, (slice(None),))
        except Exception as exc:
            raise io_error(self.uri, f"cannot read level {level}", exc) from exc
        return np.moveaxis(data, -1, 0)[[b - 1 for b in self.bands]]

    def thumbnail(self, step: int) -> tuple[np.ndarray, float]:
        """About every ``step``-th pixel, from the coarsest pyramid level at least that fine,
        and the exact decimation factor relative to this level."""
        level, factor = self.level, 1.0
        for candidate, rel in self.coarser:
            if rel <= step:
                level, factor = candidate, rel
        stride = max(1, int(step / factor))
        return self.read_level(level)[:, ::stride, ::stride], factor * stride

    def _read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        pixels, _ = self.thumbnail(step)
        return pixels, np.ones(pixels.shape[1:], bool)

    def physical(self, index: np.ndarray) -> np.ndarray:
        """x, y in µm from the top-left corner of the slide (pixels when mpp is unknown)."""
        return index[:, ::-1] * (self.mpp or 1.0)

    def spatial_ref(self) -> SlideRef:
        return SlideRef(self.mpp, self.level, self.downsample)


def base_mpp(tif: tifffile.TiffFile) -> float | None:
    """µm per pixel of the full-resolution level, from the file's metadata, or None."""
    page = tif.pages.first
    desc = page.description or ""
    match = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if match:
        return float(match.group(1))
    if tif.is_ome and tif.ome_metadata:
        size = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if size:
            return float(size.group(1)) * _UM_PER.get(unit.group(1) if unit else "µm", 1.0)
    res, res_unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is not None and res_unit is not None and res_unit.value in (2, 3):  # inch, cm
        pixels_per_unit = res.value[0] / res.value[1]
        if pixels_per_unit > 0:
            return (25400.0 if res_unit.value == 2 else 10000.0) / pixels_per_unit
    return None


def pick_level(downsamples: list[float], mpp: float | None, target_mpp: float | None) -> int:
    """The coarsest pyramid level still at least as fine as ``target_mpp`` (10 % tolerance);
    level 0 without a target or a pixel size."""
    if not (target_mpp and mpp):
        return 0
    fine_enough = [i for i, d in enumerate(downsamples) if mpp * d <= target_mpp * 1.1]
    return fine_enough[-1] if fine_enough else 0


def open_slide(uri: str, cfg: InputConfig | None = None) -> Slide:
    """Open a slide's header, pick the pyramid level for ``input.target_mpp`` (``input.mpp``
    overrides the file's pixel size), return a lazy handle."""
    cfg = cfg or InputConfig()
    target_mpp, mpp = cfg.target_mpp, cfg.mpp
    try:
        with open_input(uri) as fh, tifffile.TiffFile(fh) as tif:
            series = tif.series[0]
            shapes = [tuple(level.shape) for level in series.levels]
            axes = series.axes
            dtype = np.dtype(series.dtype).name
            found = base_mpp(tif)
    except Exception as exc:
        raise io_error(uri, "not a readable slide", exc) from exc
    if not axes.endswith("YXS") and axes != "YX":
        raise UserError(uri, f"expected an RGB slide (axes YXS), got axes {axes}")
    full = mpp or found
    if full is None:
        warnings.warn(f"{uri}: no pixel size in the file and no input.mpp: areas in pixels",
                      stacklevel=2)
    downsamples = [shapes[0][1] / s[1] for s in shapes]
    level = pick_level(downsamples, full, target_mpp)
    count = shapes[level][2] if len(shapes[level]) == 3 else 1
    chosen = select_bands(uri, cfg.bands, count, "slide", default=3)
    coarser = tuple((i, downsamples[i] / downsamples[level])
                    for i in range(level + 1, len(shapes)))
    slide = Slide(uri=uri, spatial_shape=shapes[level][:2], bands=chosen, dtype=dtype,
                  level=level, downsample=downsamples[level],
                  mpp=full * downsamples[level] if full else None, coarser=coarser)
    slide.read((slice(0, min(16, shapes[level][0])), slice(0, min(16, shapes[level][1]))))
    return slide
