"""The output mask store: a Zarr v3 group, created whole before any chunk is inferred.

Layout (``ROOT/masks/<image_id>.zarr``):
  0            class ids (y, x); one Zarr shard (or chunk) per work chunk, so no two workers
               ever write the same object (concurrent writers of one shard lose data)
  instances    object ids (uint32, 0 = no object), laid out like ``0``; only when instances are on
  progress     one uint8 per work chunk: 0 to do, 1 written, 2 skipped (all nodata); set after
               the chunk's mask is written, it is the resume record; its chunks are 1x1 so
               every worker writes only its own object
  x, y         pixel-centre coordinates, spatial_ref: CF grid mapping (crs_wkt, GeoTransform),
               so ``xarray.open_zarr`` + rioxarray recover the CRS and transform
The group attribute ``segflow.complete`` turns true only once every chunk is in.
ROOT may be a local path or an fsspec URL (s3://bucket/results): zarr writes every chunk or
shard as one object (a PUT on S3), so "one writer per shard" holds on object stores too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from tasks.plan import Chunk, Plan
from tasks.storage import zarr_options

SHARD_INNER = {2: 512, 3: 64}  # inner chunk side per spatial rank: the unit a reader fetches
DONE_WRITTEN, DONE_SKIPPED = 1, 2


@dataclass(frozen=True)
class MaskStore:
    """Where one image's mask lives and how its class-id array is laid out."""

    uri: str
    dtype: str
    nodata: int

    def labels(self, mode: str = "r") -> zarr.Array:
        return zarr.open_array(store=self.uri, path="0", mode=mode, **zarr_options(self.uri))

    def instances(self, mode: str = "r") -> zarr.Array:
        return zarr.open_array(store=self.uri, path="instances", mode=mode,
                               **zarr_options(self.uri))

    def progress(self, mode: str = "r") -> zarr.Array:
        return zarr.open_array(store=self.uri, path="progress", mode=mode,
                               **zarr_options(self.uri))

    def write_chunk(self, chunk: Chunk, labels: np.ndarray, skipped: bool = False) -> None:
        """Write one chunk's class ids (if any: an all-nodata chunk writes none), then record
        it done."""
        if labels.size:
            self.labels("r+")[chunk.core] = labels
        self.progress("r+")[chunk.index] = DONE_SKIPPED if skipped else DONE_WRITTEN


def label_dtype(n_classes: int) -> tuple[str, int]:
    """Smallest unsigned dtype holding the classes, with its maximum reserved for nodata."""
    return ("uint8", 255) if n_classes < 255 else ("uint16", 65535)


def _inner_chunk(chunk: int, ndim: int) -> int | None:
    """Inner chunk for a shard of side ``chunk``, or None when sharding does not fit evenly."""
    inner = SHARD_INNER[ndim]
    return inner if chunk > inner and chunk % inner == 0 else None


def open_or_create(uri: str, plan: Plan, dims: tuple[str, ...], n_classes: int,
                   attrs: dict[str, Any], resume: str, grid_mapping: dict[str, Any] | None,
                   coords: dict[str, tuple[np.ndarray, dict[str, Any]]],
                   ) -> tuple[MaskStore, set[tuple[int, ...]], bool]:
    """Open the store for resuming (same resume key) or create it anew with its full schema.

    Returns the store, the chunk indexes already written, and whether the store is complete.
    """
    dtype, nodata = label_dtype(n_classes)
    store = MaskStore(uri=uri, dtype=dtype, nodata=nodata)
    try:
        group = zarr.open_group(store=uri, mode="r", **zarr_options(uri))
        meta = group.attrs.get("segflow", {})
        if meta.get("resume_key") == resume:
            done = store.progress()[:]
            finished = {tuple(int(i) for i in idx) for idx in np.argwhere(done > 0)}
            return store, finished, bool(meta.get("complete"))
    except (FileNotFoundError, KeyError, zarr.errors.NodeTypeValidationError,
            zarr.errors.GroupNotFoundError):
        pass

    group = zarr.open_group(store=uri, mode="w", zarr_format=3, **zarr_options(uri))
    rank = len(plan.shape)
    inner = _inner_chunk(plan.chunk, rank)
    side = min(plan.chunk, max(plan.shape))
    layout: dict[str, Any] = ({"shards": (plan.chunk,) * rank, "chunks": (inner,) * rank}
                              if inner else {"chunks": (side,) * rank})
    group.create_array("0", shape=plan.shape, dtype=dtype, fill_value=nodata,
                       dimension_names=list(dims),
                       attributes={"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
                       if grid_mapping else {},
                       **layout)
    group.create_array("progress", shape=plan.grid, dtype="uint8", fill_value=0,
                       chunks=(1,) * rank, dimension_names=[f"chunk_{d}" for d in dims])
    for name, (values, coord_attrs) in coords.items():
        arr = group.create_array(name, shape=values.shape, dtype=values.dtype,
                                 chunks=values.shape, dimension_names=[name],
                                 attributes=coord_attrs)
        arr[:] = values
    if grid_mapping:
        sref = group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0,
                                  dimension_names=[], attributes=grid_mapping)
        sref[...] = 0
    group.attrs.update({**attrs, "segflow": {**attrs.get("segflow", {}), "resume_key": resume,
                                             "complete": False}})
    return store, set(), False


def create_instances(store: MaskStore) -> None:
    """(Re)create the ``instances`` array with the shape, chunks and shards of ``0``, so each
    work chunk writes only its own shards of it too."""
    group = zarr.open_group(store=store.uri, mode="r+", **zarr_options(store.uri))
    labels = group["0"]
    group.create_array("instances", shape=labels.shape, dtype="uint32", fill_value=0,
                       chunks=labels.chunks, shards=labels.shards, overwrite=True,
                       dimension_names=labels.metadata.dimension_names,
                       attributes=labels.attrs.asdict())


def mark_complete(uri: str, summary: dict[str, Any], ome: dict[str, Any]) -> None:
    """Write the OME-Zarr metadata and flag the store complete, last of all."""
    group = zarr.open_group(store=uri, mode="r+", **zarr_options(uri))
    group.attrs["ome"] = ome
    meta = dict(group.attrs["segflow"])
    meta.update(summary, complete=True)
    group.attrs["segflow"] = meta
