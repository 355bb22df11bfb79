"""GeoTIFF/COG reader: windows read lazily with rasterio, carrying CRS and affine.

Workers open the file themselves for each window (rasterio datasets are not thread-safe), so the
client never holds pixels and memory is bounded by the window size, never by the image size.
On S3 each window is a few HTTP range requests (GDAL's /vsis3/, see runtime/storage.py); the
handle pickled to a worker is only the URI, the worker's own environment supplies credentials.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError, io_error
from segflow.tasks.runtime.storage import open_input, raster_dataset
from segflow.tasks.sources.base import Box, SourceBase, select_bands
from segflow.tasks.sources.georef import Georef
from segflow.tasks.sources.spatial import RasterRef

# a raster without a geotransform is read in pixel units, which segflow says itself (area_unit
# "px"); rasterio would warn on every window a worker reads
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


@dataclass(frozen=True)
class Raster(SourceBase):
    """A GeoTIFF/COG: what to read (uri, bands) and where it lies (CRS, affine)."""

    nodata: float | None = None
    crs_wkt: str | None = None
    transform: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # affine a, b, c, d, e, f

    reader: ClassVar[str] = "geotiff"
    modality: ClassVar[str] = "raster"
    base_unit: ClassVar[str] = "m2"

    @property
    def height(self) -> int:
        return self.spatial_shape[0]

    @property
    def width(self) -> int:
        return self.spatial_shape[1]

    @property
    def georef(self) -> Georef:
        return Georef(self.crs_wkt, self.transform)

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = box
        window = Window.from_slices(rows, cols)
        try:
            with raster_dataset(self.uri) as ds:
                pixels = ds.read(self.bands, window=window)
                masks = ds.read_masks(self.bands, window=window)
        except RasterioError as exc:
            raise io_error(self.uri, f"cannot read window {rows.start}:{rows.stop}, "
                                     f"{cols.start}:{cols.stop}", exc) from exc
        return pixels, masks.any(axis=0)  # GDAL's per-dataset rule: valid if any band is valid

    def _read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        # GDAL decimates block by block (or uses overviews): memory is bounded by the output.
        shape = (len(self.bands), max(1, self.height // step), max(1, self.width // step))
        try:
            with raster_dataset(self.uri) as ds:
                pixels = ds.read(self.bands, out_shape=shape, resampling=Resampling.nearest)
                masks = ds.read_masks(self.bands, out_shape=shape, resampling=Resampling.nearest)
        except RasterioError as exc:
            raise io_error(self.uri, "cannot read overview", exc) from exc
        return pixels, masks.any(axis=0)

    def unwritten(self, boxes: list[Box]) -> list[bool]:
        """Boxes whose every TIFF block, in every band read, is sparse (offset 0: never written;
        GDAL reads it as nodata), from the header's block offsets, no pixel read: a 10¹⁰-pixel
        scene that is mostly empty costs its written blocks. Without a nodata value a sparse
        block reads as 0, a valid value, so nothing is known."""
        if self.nodata is None:
            return [False] * len(boxes)
        try:
            with raster_dataset(self.uri) as ds:
                return [self._sparse(ds, rows, cols) for rows, cols in boxes]
        except RasterioError as exc:
            raise io_error(self.uri, "cannot read the block offsets", exc) from exc

    def _sparse(self, ds: Any, rows: slice, cols: slice) -> bool:
        height, width = ds.block_shapes[0]
        for by in range(rows.start // height, (rows.stop - 1) // height + 1):
            for bx in range(cols.start // width, (cols.stop - 1) // width + 1):
                for band in self.bands:
                    if ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=band):
                        return False
        return True

    def physical(self, index: np.ndarray) -> np.ndarray:
        """x, y in CRS units (pixel units without a CRS) through the affine."""
        return self.georef.physical(index)

    def spatial_ref(self) -> RasterRef:
        return RasterRef(self.crs_wkt, tuple(self.transform))


#: the first bytes of files that are not TIFFs but are often renamed to .tif
_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"\x1f\x8b": "gzip", b"GIF8": "GIF",
          b"%PDF": "PDF", b"PK\x03\x04": "zip"}
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _content(uri: str) -> str:
    """What the file holds when it is not a TIFF at all, for the error line ('' otherwise)."""
    try:
        with open_input(uri) as fh:
            head = fh.read(8)
    except OSError:
        return ""
    if not head:
        return " (the file is empty)"
    if head.startswith(_TIFF):
        return ""
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    return f" (a {kind} file, not a TIFF)" if kind else " (not a TIFF: wrong magic bytes)"


def open_raster(uri: str, cfg: InputConfig | None = None) -> Raster:
    """Open a GeoTIFF/COG header (no pixels), check the request against it, return a handle."""
    cfg = cfg or InputConfig()
    try:
        with raster_dataset(uri) as ds:
            count, height, width = ds.count, ds.height, ds.width
            dtypes = set(ds.dtypes)
            nodata = ds.nodata
            crs_wkt = ds.crs.to_wkt() if ds.crs else None
            transform = tuple(ds.transform)[:6]
            # A header alone does not prove the pixels decode: read one block now so a corrupt
            # file fails here, in planning, not half-way through a run.
            ds.read(1, window=Window(0, 0, min(width, 16), min(height, 16)))
    except RasterioError as exc:
        raise io_error(uri, f"not a readable raster{_content(uri)}", exc) from exc
    if height == 0 or width == 0:
        raise UserError(uri, "raster has no pixels")
    problem = Georef(crs_wkt, transform).problem(height, width)
    if problem:
        raise UserError(uri, problem)
    chosen = select_bands(uri, cfg.bands, count, "raster")
    if len(dtypes) != 1:
        raise UserError(uri, f"bands have mixed dtypes {sorted(dtypes)}")
    return Raster(uri=uri, spatial_shape=(height, width), bands=chosen, dtype=dtypes.pop(),
                  nodata=nodata, crs_wkt=crs_wkt, transform=transform)
