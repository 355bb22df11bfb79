"""The one grid a STAC image is read on: CRS, cell size and extent, from ``input.crs``,
``input.resolution`` and ``input.bbox`` or from the assets themselves.

Defaults keep the data where it is: the first asset's CRS, the finest asset's cell size, and
cell edges on that asset's own edges, so a 10 m band is read as it is stored and only coarser
bands (and other CRSs) are resampled. In another CRS, cell edges fall on multiples of the cell
size (GDAL's ``-tap``), so tiles of one collection share a grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.warp import calculate_default_transform, transform_bounds

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError
from segflow.tasks.sources.stac_items import Header, union

#: a bound within this fraction of a cell of a grid line is on it (float noise in affines)
_SNAP = 1e-6


@dataclass(frozen=True)
class Grid:
    crs_wkt: str
    transform: tuple[float, ...]
    shape: tuple[int, int]


def _crs(uri: str, text: str, what: str) -> CRS:
    try:
        return CRS.from_user_input(text)
    except CRSError as exc:
        raise UserError(uri, f"{what} {text!r} is not a CRS: {exc}") from None


def _cell_in(head: Header, crs: CRS) -> float:
    """The asset's cell size in ``crs`` units (its own when the CRS is the same)."""
    if CRS.from_wkt(head.crs_wkt) == crs:
        return head.cell
    from affine import Affine

    transform, _, _ = calculate_default_transform(
        head.crs_wkt, crs, head.width, head.height, *head.bounds)
    return min(abs(Affine(*transform[:6]).a), abs(Affine(*transform[:6]).e))


def grid_for(uri: str, headers: list[Header], cfg: InputConfig) -> Grid:
    data = [h for h in headers if not h.is_mask]
    crs = _crs(uri, cfg.crs, "input.crs") if cfg.crs else CRS.from_wkt(data[0].crs_wkt)
    cell = cfg.resolution or min(_cell_in(h, crs) for h in data)
    if cfg.bbox:
        area = transform_bounds(_crs(uri, cfg.bbox_crs, "input.bbox_crs"), crs, *cfg.bbox,
                                densify_pts=21)
    else:
        area = union([transform_bounds(h.crs_wkt, crs, *h.bounds, densify_pts=21)
                       for h in data])
    # cell edges: on the finest native asset's own edges, else on multiples of the cell
    native = [h for h in data if CRS.from_wkt(h.crs_wkt) == crs and
              math.isclose(h.cell, cell, rel_tol=1e-9)]
    x0, y0 = (native[0].transform[2], native[0].transform[5]) if native else (0.0, 0.0)
    west = x0 + math.floor((area[0] - x0) / cell + _SNAP) * cell
    east = x0 + math.ceil((area[2] - x0) / cell - _SNAP) * cell
    south = y0 + math.floor((area[1] - y0) / cell + _SNAP) * cell
    north = y0 + math.ceil((area[3] - y0) / cell - _SNAP) * cell
    width, height = round((east - west) / cell), round((north - south) / cell)
    if width <= 0 or height <= 0:
        raise UserError(uri, f"the area to read ({area}) holds no {cell} cell")
    return Grid(crs.to_wkt(), (cell, 0.0, west, 0.0, -cell, north), (height, width))
