"""A raster's place on Earth, in the forms its users need: per-row pixel areas, the CF grid
mapping and pixel-centre coordinates that xarray + rioxarray read back, and the OME cell size.

One ``Georef`` holds the CRS and the affine (rasterio's order: x = a*col + b*row + c,
y = d*col + e*row + f), so the unpacking and the CRS's unit live here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS

Coordinates = dict[str, tuple[np.ndarray, dict[str, Any]]]


@dataclass(frozen=True)
class Georef:
    """A grid's CRS (WKT, None for none) and affine."""

    crs_wkt: str | None
    transform: tuple[float, ...]

    @cached_property
    def crs(self) -> CRS | None:
        return CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])

    @property
    def north_up(self) -> bool:
        """No rotation or shear terms."""
        return not (self.affine.b or self.affine.d)

    @property
    def unit_factor(self) -> float:
        """Metres per CRS unit along the axes (1 for degrees, which are not lengths)."""
        crs = self.crs
        return crs.axis_info[0].unit_conversion_factor if crs and crs.axis_info else 1.0

    def problem(self, height: int, width: int) -> str | None:
        """What makes this grid unusable, decided from the header before any pixel is read:
        a singular affine, or a geographic extent beyond the poles or wider than the globe
        (longitudes may run past ±180°, as a grid crossing the antimeridian does)."""
        t = self.affine
        if not np.isfinite(self.transform[:6]).all() or t.determinant == 0:
            return f"the geotransform {tuple(self.transform[:6])} is singular or not finite"
        if self.crs is None or not self.crs.is_geographic:
            return None
        if not self.north_up:
            return "a geographic (degree) grid with rotation terms has no defined cell areas"
        lats = sorted((t.f, t.f + t.e * height))
        lons = sorted((t.c, t.c + t.a * width))
        if lats[0] < -90 or lats[1] > 90:
            return (f"latitude extent {lats[0]:g}..{lats[1]:g}° reaches past a pole "
                    "(a geographic grid lies within -90..90°)")
        if lons[1] - lons[0] > 360 or lons[0] < -360 or lons[1] > 360:
            return (f"longitude extent {lons[0]:g}..{lons[1]:g}° is wider than the globe or "
                    "beyond -360..360°")
        return None

    def row_areas_m2(self, height: int) -> np.ndarray | None:
        """Area in m² of one pixel in each row, or None without a CRS.

        Projected CRSs: the affine's determinant. Geographic ones: a pixel shrinks with latitude,
        so each row is one geodesic quadrilateral on the CRS's own ellipsoid (pyproj.Geod), not
        the area at the centre latitude.
        """
        crs = self.crs
        if crs is None:
            return None
        t = self.affine
        if not crs.is_geographic:
            return np.full(height, abs(t.determinant) * self.unit_factor ** 2)
        if not self.north_up:
            raise ValueError("geodesic areas need a north-up grid (no rotation terms)")
        geod = crs.get_geod()
        if geod is None:
            raise ValueError("geodesic areas need a CRS with an ellipsoid")
        areas = np.empty(height)
        for r, top in enumerate(t.f + t.e * np.arange(height)):
            lats = [top, top, top + t.e, top + t.e]
            lons = [t.c, t.c + t.a, t.c + t.a, t.c]
            area, _ = geod.polygon_area_perimeter(lons, lats)
            areas[r] = abs(area)
        return areas

    def cell_size(self) -> tuple[str | None, list[float]]:
        """(unit, [y, x] size) of one cell for OME-Zarr axes; no unit for degrees or a rotated
        grid (pixels then)."""
        t = self.affine
        if self.crs is None or not self.north_up:
            return None, [1.0, 1.0]
        if self.crs.is_geographic:
            return None, [abs(t.e), abs(t.a)]
        return "meter", [abs(t.e) * self.unit_factor, abs(t.a) * self.unit_factor]

    def physical(self, index: np.ndarray) -> np.ndarray:
        """x, y in CRS units (pixel units without a CRS) of continuous (row, col) indexes."""
        # affine applies itself to arrays of x and y alike, but types only float vectors
        xs, ys = self.affine @ (index[:, 1], index[:, 0])  # type: ignore[operator]
        return np.stack([np.asarray(xs), np.asarray(ys)], axis=1)

    def grid_mapping(self) -> dict[str, Any] | None:
        """Attributes of the CF ``spatial_ref`` variable (as rioxarray writes them), or None."""
        if self.crs is None:
            return None
        t = self.affine
        return {
            "crs_wkt": self.crs_wkt,
            "spatial_ref": self.crs_wkt,
            "GeoTransform": f"{t.c!r} {t.a!r} {t.b!r} {t.f!r} {t.d!r} {t.e!r}",  # GDAL order
            **self.crs.to_cf(),
        }

    def pixel_centres(self, height: int, width: int) -> Coordinates:
        """1-D x/y coordinates of pixel centres for a north-up grid (pixel indexes otherwise)."""
        if self.crs is None or not self.north_up:
            return {"y": (np.arange(height, dtype=np.float64), {"units": "pixel"}),
                    "x": (np.arange(width, dtype=np.float64), {"units": "pixel"})}
        t = self.affine
        # (affine applies itself to arrays of x and y alike, but types only float vectors)
        xs = np.asarray((t @ (np.arange(width) + 0.5, np.full(width, 0.5)))[0])  # type: ignore[operator]
        ys = np.asarray((t @ (np.full(height, 0.5), np.arange(height) + 0.5))[1])  # type: ignore[operator]
        if self.crs.is_geographic:
            return {"y": (ys, {"units": "degrees_north", "standard_name": "latitude"}),
                    "x": (xs, {"units": "degrees_east", "standard_name": "longitude"})}
        unit = self.crs.axis_info[0].unit_name if self.crs.axis_info else "metre"
        return {"y": (ys, {"units": unit, "standard_name": "projection_y_coordinate"}),
                "x": (xs, {"units": unit, "standard_name": "projection_x_coordinate"})}


def through(frame: Affine, geometry: Any) -> Any:
    """A shapely geometry, or an array of them, mapped through the affine ``frame`` (pixel
    corners (col, row) to a CRS, µm or level-0 pixels, or back with ``~frame``)."""
    matrix = np.array([[frame.a, frame.b], [frame.d, frame.e]])
    offset = np.array([frame.c, frame.f])
    return shapely.transform(geometry, lambda xy: xy @ matrix.T + offset)
