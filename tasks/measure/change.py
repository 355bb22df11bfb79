"""Change between two masks of one grid (``segflow change``): the from-to matrix and a change
mask whose class ``from * n_b + to`` names both, streamed chunk by chunk on the workers.

A mask store carries its grid (shape, and the CRS and affine, the slide's µm per pixel or the
volume's voxel affine), so two masks are compared without their sources; any difference is a
one-line error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from distributed import Client

from segflow.tasks.colours import PALETTE
from segflow.tasks.config import ClassSpec, StatsConfig
from segflow.tasks.errors import UserError, on_worker
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.classes import UNITS
from segflow.tasks.models.base import label_dtype
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.runtime.storage import zarr_options
from segflow.tasks.runtime.zarr_nodes import array_at, attributes, dimension_names, read_cells
from segflow.tasks.sources.georef import Coordinates
from segflow.tasks.sources.spatial import SpatialRef


@dataclass(frozen=True)
class Mask:
    """A complete mask store as ``segflow change`` reads it."""

    uri: str
    image_id: str
    store: MaskStore
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    chunk: int
    classes: list[ClassSpec]
    ref: SpatialRef

    @property
    def modality(self) -> str:
        return str(self.ref.to_attrs()["modality"])

    def row_sizes(self) -> tuple[np.ndarray | None, str | None]:
        """The size of one cell in each row (base units) and the reporting unit, as the
        ``class_stats`` of the run that made the mask (None, None: no physical size)."""
        sizes = self.ref.row_sizes(self.shape[0])
        if sizes is None:
            return None, None
        units = StatsConfig()
        return sizes, {"m2": units.area_unit, "um2": units.slide_unit,
                       "mm3": units.volume_unit}[self.ref.base_unit]

    def coordinates(self) -> tuple[Coordinates, dict[str, Any] | None]:
        """Pixel-centre coordinates and the CF grid mapping, for the change store."""
        return self.ref.coordinates(self.shape), self.ref.grid_mapping()


def open_mask(uri: str) -> Mask:
    """The mask store at ``uri``; a one-line error unless it is a complete segflow mask."""
    try:
        group = zarr.open_group(store=uri, mode="r", **zarr_options(uri))
        meta, labels = dict(attributes(group)["segflow"]), array_at(group, "0")
    except Exception as exc:  # missing store, not a group, no attributes
        raise UserError(uri, "not a segflow mask store") from exc
    if not meta.get("complete"):
        raise UserError(uri, "the mask is not complete (its run failed or is still running)")
    classes = [ClassSpec(**c) for c in meta["classes"]]
    _, nodata = label_dtype(max(c.id for c in classes) + 1)
    chunk = (labels.shards or labels.chunks)[0]
    name = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")
    return Mask(uri, name, MaskStore(uri, labels.dtype.name, nodata), tuple(labels.shape),
                tuple(str(name) for name in dimension_names(labels) or ()), chunk, classes,
                SpatialRef.from_attrs(dict(attributes(group).get("spatial", {}))))


def grid_difference(a: Mask, b: Mask) -> str | None:
    """What makes two masks' grids differ (shape, modality, CRS, affine, pixel size), or None."""
    if a.shape != b.shape:
        return f"shape {' x '.join(map(str, a.shape))} vs {' x '.join(map(str, b.shape))}"
    return a.ref.difference(b.ref)


def change_classes(a: list[ClassSpec], b: list[ClassSpec]) -> list[ClassSpec]:
    """Class ``i * n_b + j`` of the change mask: ``a``'s class i became ``b``'s class j."""
    n_b = max(c.id for c in b) + 1
    table = [ClassSpec(id=ca.id * n_b + cb.id, name=f"{ca.name} -> {cb.name}",
                       colour=PALETTE[i % len(PALETTE)])
             for i, (ca, cb) in enumerate((ca, cb) for ca in a for cb in b)]
    if max(c.id for c in table) >= 65535:
        raise UserError("segflow change", f"{len(a)} x {len(b)} classes do not fit a uint16 "
                                          "change mask")
    return table


def change_chunk(chunk: Chunk, a: MaskStore, b: MaskStore, out: MaskStore, n_b: int,
                 n_out: int, row_sizes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Write one chunk of the change mask; its cells and sizes per change class (the last slot:
    nodata in either mask)."""
    return on_worker(_change_chunk, chunk, a, b, out, n_b, n_out, row_sizes)


def _change_chunk(chunk: Chunk, a: MaskStore, b: MaskStore, out: MaskStore, n_b: int,
                  n_out: int, row_sizes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    la = read_cells(a.labels(), chunk.core).astype(np.int64)
    lb = read_cells(b.labels(), chunk.core).astype(np.int64)
    valid = (la != a.nodata) & (lb != b.nodata)
    code = np.where(valid, la * n_b + lb, n_out)
    out.write_chunk(chunk, np.where(valid, code, out.nodata).astype(out.dtype))
    weights = (np.ones(code.shape) if row_sizes is None
               else np.broadcast_to(row_sizes[chunk.core[0]].reshape(-1, *(1,) * (code.ndim - 1)),
                                    code.shape))
    return (np.bincount(code.ravel(), minlength=n_out + 1),
            np.bincount(code.ravel(), weights=weights.ravel(), minlength=n_out + 1))


def change_rows(client: Client, chunks: list[Chunk], a: Mask, b: Mask,
                out: MaskStore) -> list[dict[str, Any]]:
    """Write every chunk of the change mask; one ``change`` row per pair of classes."""
    n_b = max(c.id for c in b.classes) + 1
    n_out = (max(c.id for c in a.classes) + 1) * n_b
    sizes, unit = a.row_sizes()
    parts = client.gather(client.map(change_chunk, chunks, a=a.store, b=b.store, out=out,
                                     n_b=n_b, n_out=n_out, row_sizes=sizes, pure=False))
    pixels = np.sum([p[0] for p in parts], axis=0)
    area = np.sum([p[1] for p in parts], axis=0)
    scale = UNITS[unit] if unit else 1.0
    return [{"image_id_a": a.image_id, "image_id_b": b.image_id, "class_a": ca.id,
             "name_a": ca.name, "class_b": cb.id, "name_b": cb.name,
             "pixels": int(pixels[ca.id * n_b + cb.id]),
             "area": float(area[ca.id * n_b + cb.id] / scale) if unit
             else float(pixels[ca.id * n_b + cb.id]), "area_unit": unit or "px"}
            for ca in a.classes for cb in b.classes]
