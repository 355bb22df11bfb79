"""STAC items as one image: per-band COGs at mixed resolutions, cloud masks and mosaics,
resampled onto one grid window by window on the workers.

SOURCE is a STAC Item (JSON, local or on S3/HTTP, or a STAC API item URL), an ItemCollection
(every item: a mosaic), or ``collection.json#item-id`` (one item of it). pystac reads the items
and resolves their asset hrefs; each worker opens only the assets its window touches, through
a GDAL ``WarpedVRT`` onto the image's grid, so a 20 m band is resampled for that window alone
and the chunked result equals warping the whole scene first (``nearest`` exactly; other
resamplings up to GDAL's per-window source margins).

The grid (tasks/sources/stac_grid.py) and the per-cell mosaic and mask rule are segflow's: no
library composes windows of several items on a worker without loading the scene (stackstac
and odc-stac build whole Dask graphs of their own).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError, io_error
from segflow.tasks.runtime.storage import raster_dataset
from segflow.tasks.sources.base import Box, SourceBase, select_bands
from segflow.tasks.sources.georef import Georef
from segflow.tasks.sources.spatial import RasterRef
from segflow.tasks.sources.stac_grid import grid_for
from segflow.tasks.sources.stac_items import Layer, Tile, read_items, tiles_of


@dataclass(frozen=True)
class StacScene(SourceBase):
    """One image made of STAC assets: for each item (``tiles``, in mosaic order) the layers to
    read in band order and its mask layer, all warped onto one grid (CRS + affine)."""

    tiles: tuple[Tile, ...] = ()
    crs_wkt: str | None = None
    transform: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    mask_values: tuple[int, ...] = ()
    mask_bits: tuple[int, ...] = ()
    apply_scale: bool = False
    #: the first item's acquisition time, and every item's href (the results' STAC item
    #: names them: ``datetime``, ``derived_from``)
    datetime: str | None = None
    item_hrefs: tuple[str, ...] = ()

    reader: ClassVar[str] = "stac"
    modality: ClassVar[str] = "raster"
    base_unit: ClassVar[str] = "m2"

    @property
    def georef(self) -> Georef:
        return Georef(self.crs_wkt, self.transform)

    def spatial_ref(self) -> RasterRef:
        return RasterRef(self.crs_wkt, tuple(self.transform))

    def physical(self, index: np.ndarray) -> np.ndarray:
        return self.georef.physical(index)

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = box
        window = Window.from_slices(rows, cols)
        return self._composite(window, (rows.stop - rows.start, cols.stop - cols.start))

    def _read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        height, width = self.spatial_shape
        window = Window(0, 0, width, height)
        return self._composite(window, (max(1, height // step), max(1, width // step)),
                               decimated=True)

    def _composite(self, window: Window, shape: tuple[int, int], decimated: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The mosaic of one window: each cell from the first item (in ``tiles`` order) whose
        every band is valid there and whose mask asset does not flag it."""
        pixels = np.zeros((len(self.bands), *shape), np.dtype(self.dtype))
        valid = np.zeros(shape, bool)
        west, south = self.georef.affine @ (window.col_off, window.row_off + window.height)
        east, north = self.georef.affine @ (window.col_off + window.width, window.row_off)
        area = (min(west, east), min(south, north), max(west, east), max(south, north))
        first = True
        for tile in self.tiles:
            if valid.all():
                break
            if not tile.touches(area):
                continue
            values, ok = self._read_tile(tile, window, shape, decimated)
            take = ok & ~valid
            if first:  # invalid cells keep the first item's values, as a one-item read does
                pixels[:] = values
                first = False
            else:
                pixels[:, take] = values[:, take]
            valid |= take
        return pixels, valid

    def _read_tile(self, tile: Tile, window: Window, shape: tuple[int, int], decimated: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(tile.layers), *shape), np.dtype(self.dtype))
        ok = np.ones(shape, bool)
        for i, layer in enumerate(tile.layers):
            band, valid = self._warped(layer, window, shape, decimated)
            if self.apply_scale:
                band = band * layer.scale + layer.offset
            out[i] = band
            ok &= valid
        if tile.mask is not None:
            flags, known = self._warped(tile.mask, window, shape, decimated)
            ok &= ~(known & self._flagged(flags))
        return out, ok

    def _flagged(self, flags: np.ndarray) -> np.ndarray:
        codes = flags.astype(np.int64)
        hit = np.isin(codes, self.mask_values)
        for bit in self.mask_bits:
            hit |= (codes >> bit) & 1 == 1
        return hit

    def _warped(self, layer: Layer, window: Window, shape: tuple[int, int], decimated: bool
                ) -> tuple[np.ndarray, np.ndarray]:
        """One band of one asset on this image's grid, in ``window`` (at ``shape``)."""
        height, width = self.spatial_shape
        resampling = Resampling.nearest if decimated else Resampling[layer.resampling]
        try:
            with _warp(layer.href, self.crs_wkt, self.transform, width, height,
                       resampling) as vrt:
                band = vrt.read(layer.band, window=window, out_shape=shape,
                                resampling=resampling)
                mask = vrt.read_masks(layer.band, window=window, out_shape=shape,
                                      resampling=Resampling.nearest)
        except RasterioError as exc:
            raise io_error(layer.href, f"cannot read window {window.row_off}:"
                                       f"{window.row_off + window.height}, {window.col_off}:"
                                       f"{window.col_off + window.width}", exc) from exc
        return band, mask > 0

    def flagged(self, box: Box) -> np.ndarray:
        """Cells of ``box`` that some item's mask asset flags (its mask assets alone are
        read): with the written mask, what ``input.mask`` took out (tasks/measure/masked.py)."""
        rows, cols = box
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        window = Window.from_slices(rows, cols)
        hit = np.zeros(shape, bool)
        for tile in self.tiles:
            if tile.mask is not None:
                flags, known = self._warped(tile.mask, window, shape, False)
                hit |= known & self._flagged(flags)
        return hit


@contextmanager
def _warp(href: str, crs_wkt: str | None, transform: tuple[float, ...], width: int, height: int,
          resampling: Resampling) -> Iterator[WarpedVRT]:
    from affine import Affine

    with ExitStack() as stack:
        ds = stack.enter_context(raster_dataset(href))
        yield stack.enter_context(WarpedVRT(ds, crs=crs_wkt, transform=Affine(*transform[:6]),
                                            width=width, height=height,
                                            resampling=resampling))


def is_stac(uri: str) -> bool:
    """Whether a ``.json`` file is a STAC Item or an ItemCollection (it reads the file); a
    file that begins like JSON but does not parse is claimed too, so its error says so."""
    try:
        return bool(read_items(uri))
    except UserError as exc:
        return exc.reason.startswith("not JSON")
    except (OSError, ValueError):
        return False


def open_stac(uri: str, cfg: InputConfig | None = None) -> StacScene:
    """Read the item(s), choose their assets and bands, and lay one grid over them; no pixel
    is read here (asset headers only)."""
    cfg = cfg or InputConfig()
    items = read_items(uri)
    if not items:
        raise UserError(uri, "holds no STAC items")
    if cfg.mosaic == "least_cloudy":
        items = sorted(items, key=lambda i: _cloud_cover(i, uri))
    tiles, headers = tiles_of(uri, items, cfg)
    chosen = select_bands(uri, cfg.bands, len(tiles[0].layers), "STAC item")
    tiles = [replace(t, layers=tuple(t.layers[b - 1] for b in chosen)) for t in tiles]
    grid = grid_for(uri, headers, cfg)
    dtypes = {h.dtype for h in headers if not h.is_mask}
    dtype = "float32" if cfg.apply_scale else str(np.result_type(*sorted(dtypes)))
    return StacScene(
        uri=uri, spatial_shape=grid.shape, bands=chosen, dtype=dtype,
        tiles=tuple(t.in_grid(grid) for t in tiles), crs_wkt=grid.crs_wkt, transform=grid.transform,
        mask_values=tuple(cfg.mask.values) if cfg.mask else (),
        mask_bits=tuple(cfg.mask.bits) if cfg.mask else (), apply_scale=cfg.apply_scale,
        datetime=_when(items[0]), item_hrefs=tuple(dict.fromkeys(
            i.get_self_href() or uri.partition("#")[0] for i in items)))


def _when(item: Any) -> str | None:
    props = item.properties
    return props.get("datetime") or props.get("start_datetime")


def _cloud_cover(item: Any, uri: str) -> float:
    cover = item.properties.get("eo:cloud_cover")
    if cover is None:
        raise UserError(uri, f"input.mosaic=least_cloudy but item {item.id} has no "
                             "eo:cloud_cover")
    return float(cover)
