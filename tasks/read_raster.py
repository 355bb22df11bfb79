"""GeoTIFF/COG reader: windows read lazily with rasterio, carrying CRS and affine.

Workers open the file themselves for each window (rasterio datasets are not thread-safe), so the
client never holds pixels and memory is bounded by the window size, never by the image size.
On S3 each window is a few HTTP range requests (GDAL's /vsis3/, see tasks/storage.py); the
handle pickled to a worker is only the URI, the worker's own environment supplies credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from tasks.area import row_pixel_areas_m2
from tasks.errors import SegflowError, first_line
from tasks.georef import grid_mapping
from tasks.source import Box, SourceBase
from tasks.storage import raster_dataset


@dataclass(frozen=True)
class Raster(SourceBase):
    """A GeoTIFF/COG: what to read (uri, bands) and where it lies (CRS, affine)."""

    nodata: float | None = None
    crs_wkt: str | None = None
    transform: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # affine a, b, c, d, e, f

    modality: ClassVar[str] = "raster"

    @property
    def height(self) -> int:
        return self.spatial_shape[0]

    @property
    def width(self) -> int:
        return self.spatial_shape[1]

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = box
        window = Window.from_slices(rows, cols)
        try:
            with raster_dataset(self.uri) as ds:
                pixels = ds.read(self.bands, window=window)
                masks = ds.read_masks(self.bands, window=window)
        except RasterioError as exc:
            raise SegflowError(self.uri, f"cannot read window {rows.start}:{rows.stop}, "
                               f"{cols.start}:{cols.stop}: {first_line(exc)}") from exc
        return pixels, masks.any(axis=0)  # GDAL's per-dataset rule: valid if any band is valid

    def _read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        # GDAL decimates block by block (or uses overviews): memory is bounded by the output.
        shape = (len(self.bands), max(1, self.height // step), max(1, self.width // step))
        try:
            with raster_dataset(self.uri) as ds:
                pixels = ds.read(self.bands, out_shape=shape, resampling=Resampling.nearest)
                masks = ds.read_masks(self.bands, out_shape=shape, resampling=Resampling.nearest)
        except RasterioError as exc:
            raise SegflowError(self.uri, f"cannot read overview: {first_line(exc)}") from exc
        return pixels, masks.any(axis=0)

    def cell_measure(self) -> tuple[np.ndarray | None, str]:
        return row_pixel_areas_m2(self.crs_wkt, self.transform, self.height), "m2"

    def cell_size(self) -> tuple[str | None, list[float]]:
        a, b, _, d, e, _ = self.transform
        if not self.crs_wkt or b or d:
            return None, [1.0, 1.0]
        crs = CRS.from_wkt(self.crs_wkt)
        if crs.is_geographic:  # degrees are not a length: OME-Zarr gets no unit
            return None, [abs(e), abs(a)]
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return "meter", [abs(e) * factor, abs(a) * factor]

    def physical(self, index: np.ndarray) -> np.ndarray:
        """x, y in CRS units (pixel units without a CRS) through the affine."""
        a, b, c, d, e, f = self.transform
        rows, cols = index[:, 0], index[:, 1]
        return np.stack([a * cols + b * rows + c, d * cols + e * rows + f], axis=1)

    def spatial_attrs(self) -> dict[str, Any]:
        return {"crs_wkt": self.crs_wkt, "transform": list(self.transform),
                "transform_order": "affine a b c d e f (x = a*col + b*row + c)",
                "grid_mapping": grid_mapping(self.crs_wkt, self.transform)}


def open_raster(uri: str, bands: list[int] | None = None) -> Raster:
    """Open a GeoTIFF/COG header (no pixels), check the request against it, return a handle."""
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
        raise SegflowError(uri, f"not a readable raster: {first_line(exc)}") from exc
    if height == 0 or width == 0:
        raise SegflowError(uri, "raster has no pixels")
    chosen = tuple(bands) if bands else tuple(range(1, count + 1))
    if max(chosen) > count:
        raise SegflowError(uri, f"band {max(chosen)} requested but the raster has {count}")
    if len(dtypes) != 1:
        raise SegflowError(uri, f"bands have mixed dtypes {sorted(dtypes)}")
    return Raster(uri=uri, spatial_shape=(height, width), bands=chosen, dtype=dtypes.pop(),
                  nodata=nodata, crs_wkt=crs_wkt, transform=transform)
