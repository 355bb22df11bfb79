"""GeoTIFF/COG reader: a picklable handle that reads windows lazily and carries its spatial
reference.

Workers open the file themselves for each window (rasterio datasets are not thread-safe), so the
client never holds pixels and memory is bounded by the window size, never by the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from tasks.errors import SegflowError, first_line

Box = tuple[slice, slice]  # (rows, cols) in image pixel coordinates


@dataclass(frozen=True)
class Raster:
    """A lazily read raster: what to read (uri, bands) and where it lies (CRS, affine)."""

    uri: str
    height: int
    width: int
    bands: tuple[int, ...]
    dtype: str
    nodata: float | None
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.bands), self.height, self.width)

    @property
    def ndim(self) -> int:
        return 3

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (bands, h, w) in the source dtype and the valid mask (h, w) of one window."""
        rows, cols = box
        window = Window.from_slices(rows, cols)
        try:
            with rasterio.open(self.uri) as ds:
                pixels = ds.read(self.bands, window=window)
                masks = ds.read_masks(self.bands, window=window)
        except RasterioError as exc:
            raise SegflowError(self.uri, f"cannot read window {rows.start}:{rows.stop}, "
                               f"{cols.start}:{cols.stop}: {first_line(exc)}") from exc
        valid = masks.any(axis=0)  # GDAL's per-dataset rule: valid if any band is valid
        if pixels.dtype.kind == "f":
            valid &= ~np.isnan(pixels).any(axis=0)
        return pixels, valid

    def read_masked(self, box: Box) -> np.ndarray:
        """One window as float64 with NaN where invalid: the form global fits reduce over."""
        pixels, valid = self.read(box)
        out = pixels.astype(np.float64)
        out[:, ~valid] = np.nan
        return out

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        """Array protocol for dask.array.from_array: band slice, row slice, col slice."""
        bands, rows, cols = key
        return self.read_masked((rows, cols))[bands]

    def to_dask(self, chunk: int = 1024) -> da.Array:
        """The whole raster as a lazy float64 dask array (bands, y, x), NaN where invalid."""
        return da.from_array(self, chunks=(len(self.bands), chunk, chunk), asarray=False,
                             lock=False, fancy=False, meta=np.empty((0, 0, 0), np.float64),
                             name=f"raster-{self.uri}-{self.bands}-{chunk}")

    def read_overview(self, max_pixels: int) -> np.ndarray:
        """A decimated (nearest) read of valid pixels, (n, bands), for fits that need a sample.

        GDAL decimates block by block (or uses overviews), so memory is bounded by the output.
        The sample depends only on the image, never on the chunk size.
        """
        step = max(1, int(np.ceil(np.sqrt(self.height * self.width / max_pixels))))
        shape = (max(1, self.height // step), max(1, self.width // step))
        try:
            with rasterio.open(self.uri) as ds:
                pixels = ds.read(self.bands, out_shape=(len(self.bands), *shape),
                                 resampling=Resampling.nearest)
                masks = ds.read_masks(self.bands, out_shape=(len(self.bands), *shape),
                                      resampling=Resampling.nearest)
        except RasterioError as exc:
            raise SegflowError(self.uri, f"cannot read overview: {first_line(exc)}") from exc
        valid = masks.any(axis=0)
        if pixels.dtype.kind == "f":
            valid &= ~np.isnan(pixels).any(axis=0)
        return pixels[:, valid].T


def open_raster(uri: str, bands: list[int] | None = None) -> Raster:
    """Open a GeoTIFF/COG header (no pixels), check the request against it, return a handle."""
    try:
        with rasterio.open(uri) as ds:
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
    return Raster(uri=uri, height=height, width=width, bands=chosen, dtype=dtypes.pop(),
                  nodata=nodata, crs_wkt=crs_wkt, transform=transform)  # type: ignore[arg-type]
