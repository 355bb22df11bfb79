"""Physical area of the pixels of each row: from the affine for projected CRSs, geodesic for
geographic ones (a pixel's area shrinks with latitude, so it is computed per row with
pyproj.Geod on the CRS's own ellipsoid, not at the centre latitude).
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS


def row_pixel_areas_m2(crs_wkt: str | None, transform: tuple[float, ...],
                       height: int) -> np.ndarray | None:
    """Area in m² of one pixel in each row (length ``height``), or None without a CRS."""
    if not crs_wkt:
        return None
    a, b, c, d, e, f = transform
    crs = CRS.from_wkt(crs_wkt)
    if crs.is_geographic:
        if b or d:
            raise ValueError("geodesic areas need a north-up grid (no rotation terms)")
        geod = crs.get_geod()
        tops = f + e * np.arange(height)
        areas = np.empty(height)
        for r, top in enumerate(tops):  # one geodesic quadrilateral per row: area ∝ latitude
            lats = [top, top, top + e, top + e]
            lons = [c, c + a, c + a, c]
            area, _ = geod.polygon_area_perimeter(lons, lats)
            areas[r] = abs(area)
        return areas
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return np.full(height, abs(a * e - b * d) * factor ** 2)
