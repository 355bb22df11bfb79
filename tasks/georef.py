"""Spatial reference of a raster in the forms its users need.

CF/GDAL conventions (``spatial_ref`` with ``crs_wkt`` and ``GeoTransform``, x/y pixel-centre
coordinates) so xarray + rioxarray read the CRS and transform back without segflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS


def grid_mapping(crs_wkt: str | None, transform: tuple[float, ...]) -> dict[str, Any] | None:
    """Attributes of the CF ``spatial_ref`` variable (as rioxarray writes them), or None."""
    if not crs_wkt:
        return None
    a, b, c, d, e, f = transform
    crs = CRS.from_wkt(crs_wkt)
    return {
        "crs_wkt": crs_wkt,
        "spatial_ref": crs_wkt,
        "GeoTransform": f"{c!r} {a!r} {b!r} {f!r} {d!r} {e!r}",  # GDAL order
        **crs.to_cf(),
    }


def pixel_centres(height: int, width: int, crs_wkt: str | None,
                  transform: tuple[float, ...]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """1-D x/y coordinates of pixel centres for a north-up grid (pixel indexes otherwise)."""
    a, b, c, d, e, f = transform
    if crs_wkt is None or b or d:
        return {"y": (np.arange(height, dtype=np.float64), {"units": "pixel"}),
                "x": (np.arange(width, dtype=np.float64), {"units": "pixel"})}
    affine = Affine(*transform)
    xs = (affine @ (np.arange(width) + 0.5, np.full(width, 0.5)))[0]
    ys = (affine @ (np.full(height, 0.5), np.arange(height) + 0.5))[1]
    crs = CRS.from_wkt(crs_wkt)
    if crs.is_geographic:
        return {"y": (np.asarray(ys), {"units": "degrees_north", "standard_name": "latitude"}),
                "x": (np.asarray(xs), {"units": "degrees_east", "standard_name": "longitude"})}
    unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
    return {"y": (np.asarray(ys), {"units": unit, "standard_name": "projection_y_coordinate"}),
            "x": (np.asarray(xs), {"units": unit, "standard_name": "projection_x_coordinate"})}
