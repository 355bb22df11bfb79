"""Zonal statistics (``stats.zones``): per zone and class, cells, area and fraction of the
zone's valid cells, streamed over the written mask.

Zones are read once on the client (geopandas: GeoPackage, GeoJSON, GeoParquet), reprojected to
the raster's CRS and then to the raster's pixel grid, where every chunk origin is an integer:
each chunk rasterises only the zones whose box meets it (``rasterio.features.rasterize``,
GDAL's pixel-centre rule: a cell belongs to a zone when its centre lies inside), one zone at a
time so overlapping zones each count their cells. A cell is in exactly one chunk, so the
per-chunk sums add up to rasterising each zone over the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from distributed import Client
from rasterio.features import rasterize

from segflow.tasks.config import ClassSpec
from segflow.tasks.errors import UserError, on_worker
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.classes import UNITS
from segflow.tasks.plan.grid import Chunk, Plan
from segflow.tasks.runtime.cluster import broadcast
from segflow.tasks.runtime.zarr_nodes import read_cells
from segflow.tasks.sources.georef import Georef, through
from segflow.tasks.sources.vectors import read_vectors


@dataclass(frozen=True)
class Zones:
    """Zone names and their polygons in the raster's pixel coordinates (col, row)."""

    ids: list[str]
    shapes: list[shapely.Geometry]
    boxes: np.ndarray  # (n, 4): min col, min row, max col, max row


def read_zones(path: str, id_column: str | None, georef: Georef) -> Zones:
    """The zones of ``path`` on the raster's grid; a file without a CRS is taken to be in the
    raster's CRS."""
    frame = read_vectors(path, "zones")
    if id_column and id_column not in frame.columns:
        raise UserError(path, f"stats.zone_id: no column {id_column!r}; the columns are "
                              f"{[c for c in frame.columns if c != frame.geometry.name]}")
    if frame.crs is not None and georef.crs is not None:
        frame = frame.to_crs(georef.crs)
    ids = ([str(v) for v in frame[id_column]] if id_column
           else [str(i) for i in range(len(frame))])
    if len(set(ids)) != len(ids):
        raise UserError(path, f"stats.zone_id: column {id_column!r} repeats names")
    pixels = [through(~georef.affine, g) for g in frame.geometry]
    boxes = shapely.bounds(pixels) if pixels else np.empty((0, 4))
    return Zones(ids, pixels, np.asarray(boxes).reshape(-1, 4))


def zone_chunk(chunk: Chunk, store: MaskStore, zones: Zones, n_labels: int,
               row_areas: np.ndarray | None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per zone meeting this chunk: cells and size per class id (the last slot nodata)."""
    return on_worker(_zone_chunk, chunk, store, zones, n_labels, row_areas)


def _zone_chunk(chunk: Chunk, store: MaskStore, zones: Zones, n_labels: int,
                row_areas: np.ndarray | None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    rows, cols = chunk.core
    meets = np.flatnonzero((zones.boxes[:, 0] < cols.stop) & (zones.boxes[:, 2] > cols.start)
                           & (zones.boxes[:, 1] < rows.stop) & (zones.boxes[:, 3] > rows.start))
    if not len(meets):
        return {}
    labels = read_cells(store.labels(), chunk.core).astype(np.int64)
    labels[(labels == store.nodata) | (labels >= n_labels)] = n_labels
    shape = labels.shape
    weights = (np.ones(shape) if row_areas is None
               else np.broadcast_to(row_areas[rows][:, None], shape))
    window = Affine.translation(cols.start, rows.start)
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for z in meets:
        inside = rasterize([(zones.shapes[z], 1)], out_shape=shape, transform=window, fill=0,
                           dtype="uint8").astype(bool)
        if inside.any():
            found[int(z)] = (np.bincount(labels[inside], minlength=n_labels + 1),
                             np.bincount(labels[inside], weights=weights[inside],
                                         minlength=n_labels + 1))
    return found


def zone_rows(client: Client, store: MaskStore, plan: Plan, zones: Zones,
              classes: list[ClassSpec], row_areas: object, unit: str | None) -> list[dict]:
    """One row per zone and class (zones that hold no cell of the image have none);
    ``row_areas``: the reader's ``cell_measure()``, or its broadcast future."""
    n_labels = max(c.id for c in classes) + 1
    pixels = np.zeros((len(zones.ids), n_labels + 1), np.int64)
    sizes = np.zeros((len(zones.ids), n_labels + 1))
    shared = broadcast(client, zones)
    for part in client.gather(client.map(zone_chunk, plan.chunks, store=store, zones=shared,
                                         n_labels=n_labels, row_areas=row_areas, pure=False)):
        for z, (count, size) in part.items():
            pixels[z] += count
            sizes[z] += size
    scale = UNITS[unit] if unit else 1.0
    rows = []
    for z, name in enumerate(zones.ids):
        valid = int(pixels[z, :-1].sum())
        if not pixels[z].any():
            continue
        for spec in classes:
            n = int(pixels[z, spec.id])
            rows.append({"zone_id": name, "class_id": spec.id, "class_name": spec.name,
                         "pixels": n, "area": float(sizes[z, spec.id] / scale) if unit
                         else float(n), "area_unit": unit or "px",
                         "fraction": n / valid if valid else 0.0})
    return rows
