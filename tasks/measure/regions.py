"""Objects per region (``stats.regions``, a label image) and per zone (``stats.zones``,
polygons): each object counted in the region or zone under its centroid (QuPath's rule for
placing detections in annotations), with the region's size, so densities such as nuclei per
mm² of tumour come out of one query.

The regions are a label image on the input's grid (a tissue mask of another run, a land-cover
map), read chunk by chunk: each chunk returns its cells' size per region and the region under
the centroids that fall in it; the client adds them up. O(objects + regions) on the client.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from distributed import Client

from segflow.tasks.measure.classes import UNITS
from segflow.tasks.measure.objects import Instances
from segflow.tasks.measure.zones import Zones
from segflow.tasks.plan.grid import Chunk, Plan
from segflow.tasks.sources.base import SourceBase


def region_chunk(chunk: Chunk, regions: SourceBase, row_areas: np.ndarray | None,
                 points: np.ndarray) -> tuple[dict[int, float], list[int]]:
    """Size per region id of one chunk's cells (cells without a physical size count 1), and
    the region id under each of ``points`` (cell indexes inside the chunk; -1 where the
    region image has no valid value) (runs on a worker)."""
    values, valid = regions.read(chunk.core)
    ids = np.where(valid, values[0], -1).astype(np.int64)
    weights = np.ones(ids.shape)
    if row_areas is not None:
        rows = np.arange(chunk.core[0].start, chunk.core[0].stop)
        weights = np.broadcast_to(row_areas[rows].reshape((-1,) + (1,) * (ids.ndim - 1)),
                                  ids.shape)
    inside = ids >= 0
    totals = np.bincount(ids[inside], weights=weights[inside])
    present = np.bincount(ids[inside])
    sizes = {int(r): float(totals[r]) for r in np.flatnonzero(present)}
    origin = np.array([s.start for s in chunk.core])
    local = [tuple(p) for p in (points - origin).tolist()]
    return sizes, [int(ids[p]) for p in local]


def region_rows(client: Client, plan: Plan, regions: SourceBase, objects: Instances,
                row_areas: np.ndarray | None, unit: str | None,
                names: list[str] | None) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """One row per region and object class: objects whose centroid lies in the region, the
    region's size, and the density (objects per ``unit`` of the region, per cell without one);
    and each row's objects (instance ids), for ``with_means``."""
    s = objects.sums
    # the cell holding the centroid: cell i spans [i, i + 1) and the centroid is mean(i) + 0.5
    cells = np.floor(s.index_sum / np.maximum(s.pixels, 1)[:, None] + 0.5).astype(np.int64) \
        if objects.count else np.empty((0, len(plan.shape)), np.int64)
    by_chunk: dict[tuple[int, ...], list[int]] = {}
    for i, cell in enumerate(cells.tolist()):
        by_chunk.setdefault(tuple(c // plan.chunk for c in cell), []).append(i)
    futures = [client.submit(region_chunk, chunk, regions, row_areas,
                             cells[by_chunk.get(chunk.index, [])], pure=False)
               for chunk in plan.chunks]
    size: Counter[int] = Counter()
    members: dict[tuple[int, int], list[int]] = {}
    for chunk, (sizes, found) in zip(plan.chunks, client.gather(futures)):
        size.update(sizes)
        for i, region in zip(by_chunk.get(chunk.index, []), found):
            members.setdefault((region, int(objects.class_ids[i])), []).append(i + 1)
    scale = UNITS[unit] if unit else 1.0
    rows = []
    for (region, class_id), ids in sorted(members.items()):
        area = size.get(region, 0.0) / scale
        rows.append({"layer": "regions", "region_id": region,
                     "region_name": _name(region, names),
                     "class_id": class_id, "objects": len(ids), "region_area": area,
                     "area_unit": unit or "px", "density": len(ids) / area if area else None})
    return rows, [ids for _, ids in sorted(members.items())]


def zone_object_rows(zones: Zones, objects: Instances, shape: tuple[int, ...],
                     cell: tuple[str | None, list[float]], unit: str | None
                     ) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """One row per zone (``stats.zones``) and object class: objects whose centroid lies in the
    zone polygon (overlapping zones each count theirs), the zone's area (its polygon's within
    the image of ``shape``, in ``unit``; null where cells have no size in metres: a geographic
    CRS) and the density; and each row's objects (instance ids).
    ``cell``: the reader's ``cell_size()``."""
    s = objects.sums
    if not objects.count:
        return [], []
    row, col = (s.index_sum[:, :2] / np.maximum(s.pixels, 1)[:, None] + 0.5).T
    length, sizes = cell
    per_cell = sizes[0] * sizes[1] / UNITS[unit] if length == "meter" and unit else None
    rows, members = [], []
    image = shapely.box(0, 0, shape[1], shape[0])
    for z, (name, polygon) in enumerate(zip(zones.ids, zones.shapes)):
        inside = shapely.contains_xy(polygon, col, row)
        within = float(shapely.area(shapely.intersection(polygon, image)))
        area = within * per_cell if per_cell else None
        for class_id, n in sorted(Counter(objects.class_ids[inside].tolist()).items()):
            rows.append({"layer": "zones", "region_id": z, "region_name": name,
                         "class_id": int(class_id), "objects": n, "region_area": area,
                         "area_unit": unit, "density": n / area if area else None})
            ids = np.flatnonzero(inside & (objects.class_ids == class_id)) + 1
            members.append(ids.tolist())
    return rows, members


def with_means(rows: list[dict[str, Any]], members: list[list[int]],
               measured: pa.Table | None) -> None:
    """Each row's ``means``: every ``object_measurements`` measurement averaged over the row's
    objects (an undefined value left out), named ``area`` or ``DAPI: mean``; O(rows) passes
    over the table's columns, no Python object per measurement."""
    if measured is None or not len(measured):
        return
    names = pc.binary_join_element_wise(
        pc.coalesce(measured["channel"].cast(pa.string()), ""),
        measured["measurement"].cast(pa.string()), ": ")
    names = pc.utf8_ltrim(names, ": ")  # a shape measurement has no channel
    codes = pc.dictionary_encode(names).combine_chunks()
    index, labels = codes.indices.to_numpy(), codes.dictionary.to_pylist()
    ids = measured["instance_id"].to_numpy()
    values = measured["value"].to_numpy(zero_copy_only=False).astype(np.float64)
    defined = np.isfinite(values)  # nulls arrive as NaN
    for row, objects in zip(rows, members):
        pick = defined & np.isin(ids, objects)
        sums = np.bincount(index[pick], weights=values[pick], minlength=len(labels))
        counts = np.bincount(index[pick], minlength=len(labels))
        row["means"] = {labels[k]: float(sums[k] / counts[k])
                        for k in sorted(np.flatnonzero(counts), key=lambda k: labels[k])} or None


def _name(region: int, names: list[str] | None) -> str | None:
    if region < 0:
        return "outside"
    return names[region] if names and region < len(names) else None
