"""Class statistics streamed over the written mask, chunk by chunk on the workers.

Counts are kept per row so geographic rasters get exact per-row pixel areas; the client only
sums small (classes,) vectors, so memory never depends on the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segflow.tasks.config import ClassSpec, StatsConfig
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.runtime.zarr_nodes import read_cells
from segflow.tasks.sources.base import SourceBase

# Reporting units in the readers' base units (m² rasters, mm³ volumes, µm² slides).
UNITS = {"m2": 1.0, "ha": 1e4, "km2": 1e6, "mm3": 1.0, "mL": 1e3, "L": 1e6,
         "um2": 1.0, "mm2": 1e6}


def report_unit(reader: SourceBase, row_areas: object, stats: StatsConfig) -> str | None:
    """The unit sizes are reported in: the config's choice for the reader's base unit (ha for
    m², mL for mm³, mm² for µm² by default), or None (cell counts) when ``row_areas``, the
    reader's ``cell_measure()``, says the source has no physical size."""
    if row_areas is None:
        return None
    chosen = {"m2": stats.area_unit, "mm3": stats.volume_unit, "um2": stats.slide_unit}
    return chosen[reader.base_unit]


@dataclass(frozen=True)
class ChunkCounts:
    pixels: np.ndarray  # (n_labels + 1,) pixel counts per class id; the last slot is nodata
    area_m2: np.ndarray  # same shape: area per class id; zeros when there is no CRS


def count_chunk(chunk: Chunk, store: MaskStore, n_labels: int,
                row_areas: np.ndarray | None) -> ChunkCounts:
    """Per-class cell counts and sizes of one written chunk (runs on a worker).

    ``row_areas`` is the physical size of one cell at each index along axis 0 (a raster row's
    pixel area, a volume slice's voxel volume).
    """
    labels = read_cells(store.labels(), chunk.core).astype(np.int64)
    labels[(labels == store.nodata) | (labels > n_labels)] = n_labels
    height = labels.shape[0]
    rows = np.broadcast_to(np.arange(height).reshape(-1, *(1,) * (labels.ndim - 1)), labels.shape)
    per_row = np.bincount((labels * height + rows).ravel(),
                          minlength=(n_labels + 1) * height).reshape(n_labels + 1, height)
    pixels = per_row.sum(axis=1)
    if row_areas is None:
        return ChunkCounts(pixels, np.zeros(n_labels + 1))
    return ChunkCounts(pixels, per_row @ row_areas[chunk.core[0]])


def class_rows(classes: list[ClassSpec], counts: list[ChunkCounts], unit: str | None,
               objects: dict[int, int] | None = None) -> list[dict]:
    """One row per class: cells, size in ``unit`` (cell counts, ``px``, when None), fraction of
    valid cells and, for thing classes (keys of ``objects``), their object count and density
    per ``unit`` of valid area (e.g. nuclei per mm² of tissue)."""
    pixels = np.sum([c.pixels for c in counts], axis=0)
    area = np.sum([c.area_m2 for c in counts], axis=0)
    valid = int(pixels[:-1].sum())
    valid_size = float(area[:-1].sum() / UNITS[unit]) if unit else float(valid)
    rows = []
    for spec in classes:
        n = int(pixels[spec.id])
        count = None if objects is None else objects.get(spec.id)  # None: a stuff class
        rows.append({
            "class_id": spec.id,
            "class_name": spec.name,
            "pixels": n,
            "area": float(area[spec.id] / UNITS[unit]) if unit else float(n),
            "area_unit": unit or "px",
            "fraction": n / valid if valid else 0.0,
            "objects": count,
            "density": count / valid_size if count is not None and valid_size else None,
        })
    return rows
