"""The output mask store: a Zarr v3 group, created whole before any chunk is inferred.

Layout (``ROOT/masks/<image_id>.zarr``):
  0            class ids (y, x); one Zarr shard (or chunk) per work chunk, so no two workers
               ever write the same object (concurrent writers of one shard lose data)
  labels/instances/0, 1, ...  object ids (uint32, 0 = no object), laid out like ``0``, and
               their pyramid: an NGFF label image of its own; only when instances are on
  probabilities  per-class scores (class, y, x), uint8 0-255 or float16 0-1, chunked and
               sharded like ``0`` along the spatial axes; only with ``output.probabilities``
  progress     one uint8 per work chunk: 0 to do, 1 written, 2 skipped (all nodata), 3 skipped
               (no tissue on the slide thumbnail: written as glass); set after
               the chunk's mask is written, it is the resume record; its chunks are 1x1 so
               every worker writes only its own object
  x, y         pixel-centre coordinates, spatial_ref: CF grid mapping (crs_wkt, GeoTransform),
               so ``xarray.open_zarr`` + rioxarray recover the CRS and transform
The group attribute ``segflow.complete`` turns true only once every chunk is in.
ROOT may be a local path or an fsspec URL (s3://bucket/results): zarr writes every chunk or
shard as one object (a PUT on S3), so "one writer per shard" holds on object stores too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from segflow.tasks.errors import UserError, first_line
from segflow.tasks.mask.lease import check_held
from segflow.tasks.models.base import label_dtype
from segflow.tasks.plan.grid import Chunk, Plan
from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.layout import OutputRoot
from segflow.tasks.runtime.storage import filesystem, zarr_options
from segflow.tasks.runtime.zarr_nodes import (
    array_at,
    attributes,
    dimension_names,
    group_at,
    read_cells,
)
from segflow.tasks.sources.georef import Coordinates
from segflow.tasks.sources.identity import resume_key

#: the instance label image (NGFF ``labels`` group): its levels are ``INSTANCES/0``, ``/1``, ...
INSTANCES = "labels/instances"
SHARD_INNER = {2: 512, 3: 64}  # inner chunk side per spatial rank: the unit a reader fetches
#: a chunk's progress flag: segmented; skipped as nodata (nothing written); skipped as glass
#: (no tissue on the slide thumbnail: class 0 written without reading it)
DONE_WRITTEN, DONE_SKIPPED, DONE_BACKGROUND = 1, 2, 3


@dataclass(frozen=True)
class MaskStore:
    """Where one image's mask lives and how its class-id array is laid out."""

    uri: str
    dtype: str
    nodata: int
    #: dtype of the ``probabilities`` array, None when the store has none
    scores: str | None = None

    def labels(self, mode: str = "r") -> zarr.Array:
        return zarr.open_array(store=self.uri, path="0", mode=mode, **zarr_options(self.uri))

    def instances(self, mode: str = "r") -> zarr.Array:
        return zarr.open_array(store=self.uri, path=f"{INSTANCES}/0", mode=mode,
                               **zarr_options(self.uri))

    def progress(self, mode: str = "r") -> zarr.Array:
        return zarr.open_array(store=self.uri, path="progress", mode=mode,
                               **zarr_options(self.uri))

    def probabilities(self, mode: str = "r") -> zarr.Array:
        return zarr.open_array(store=self.uri, path="probabilities", mode=mode,
                               **zarr_options(self.uri))

    def write_chunk(self, chunk: Chunk, labels: np.ndarray, done: int = DONE_WRITTEN,
                    scores: np.ndarray | None = None) -> None:
        """Write one chunk's class ids (if any: an all-nodata chunk writes none) and scores,
        then record it done (``done``: how, one of the ``DONE_*`` flags)."""
        if labels.size:
            self.labels("r+")[chunk.core] = labels
        if scores is not None:
            self.probabilities("r+")[(slice(None), *chunk.core)] = scores
        self.progress("r+")[chunk.index] = done


def _inner_chunk(chunk: int, ndim: int) -> int | None:
    """Inner chunk for a shard of side ``chunk``, or None when sharding does not fit evenly."""
    inner = SHARD_INNER[ndim]
    return inner if chunk > inner and chunk % inner == 0 else None


def store_attrs(job: Job) -> dict[str, Any]:
    """The group attributes: what made the mask (source, model, fitted values, config, classes)
    and where it lies (the reader's spatial reference)."""
    return {
        "segflow": {
            "source_uri": job.source, "source_checksum": job.checksum,
            "model": job.model.identity(), "model_kind": job.model.kind,
            "fitted": job.model.fitted(), "config": job.config.model_dump(mode="json"),
            "config_hash": job.config.output_hash(),
            "classes": [c.model_dump() for c in job.model.classes],
            "chunks_total": len(job.plan.chunks),
            # the input's bands by name where the format names them (microscopy channels)
            **({"channels": names} if (names := job.reader.band_names()) else {}),
        },
        "spatial": job.reader.spatial_ref().to_attrs(),
    }


def open_job_store(job: Job) -> tuple[MaskStore, set[tuple[int, ...]], bool]:
    """The store of a fitted job: resumed when it was made from the same bytes, model and
    config, else created anew. Returns it, the chunks already written, and whether complete.
    The caller holds the store's lease (mask/lease.py)."""
    check_held(job.store_uri)
    key = resume_key(job.checksum, job.model.identity(), job.config.output_hash())
    out = job.config.output
    return open_or_create(job.store_uri, job.plan, job.reader.dims,
                          max(c.id for c in job.model.classes) + 1, store_attrs(job), key,
                          job.reader.spatial_ref().grid_mapping(),
                          job.reader.coordinates(),
                          scores=out.probabilities_dtype if out.probabilities else None)


def open_or_create(uri: str, plan: Plan, dims: tuple[str, ...], n_labels: int,
                   attrs: dict[str, Any], resume: str, grid_mapping: dict[str, Any] | None,
                   coords: Coordinates, scores: str | None = None
                   ) -> tuple[MaskStore, set[tuple[int, ...]], bool]:
    """Open the store for resuming (same resume key) or create it anew with its full schema,
    for class ids 0..``n_labels`` - 1 (and their scores in ``scores`` dtype, when given).

    Returns the store, the chunk indexes already written, and whether the store is complete.
    """
    dtype, nodata = label_dtype(n_labels)
    store = MaskStore(uri=uri, dtype=dtype.name, nodata=nodata, scores=scores)
    try:
        group = zarr.open_group(store=uri, mode="r", **zarr_options(uri))
        meta = attributes(group).get("segflow", {})
        # the same bytes, model and config, laid out on the same grid (a store from a version
        # that oriented the volume otherwise is rebuilt, never mixed)
        if (meta.get("resume_key") == resume
                and group.attrs.get("spatial") == json.loads(json.dumps(attrs.get("spatial")))):
            done = read_cells(store.progress(), slice(None))
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
    # CF's link to the CRS (GDAL, xarray/rioxarray): on the mask and on the scores alike
    georef: dict[str, Any] = ({"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
                              if grid_mapping else {})
    group.create_array("0", shape=plan.shape, dtype=dtype, fill_value=nodata,
                       dimension_names=list(dims), attributes=georef, **layout)
    if scores:
        scored: dict[str, Any] = {k: (n_labels, *v) for k, v in layout.items()}
        group.create_array("probabilities", shape=(n_labels, *plan.shape), dtype=scores,
                           fill_value=0, dimension_names=["class", *dims], attributes=georef,
                           **scored)
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
    """(Re)create level 0 of the instance label image (``labels/instances/0``) with the shape,
    chunks and shards of ``0``, so each work chunk writes only its own shards of it too."""
    group = zarr.open_group(store=store.uri, mode="r+", **zarr_options(store.uri))
    labels = array_at(group, "0")
    image = group.require_group("labels").require_group("instances")
    image.create_array("0", shape=labels.shape, dtype="uint32", fill_value=0,
                       chunks=labels.chunks, shards=labels.shards, overwrite=True,
                       dimension_names=dimension_names(labels),
                       attributes=labels.attrs.asdict())


def open_store_group(uri: str) -> tuple[zarr.Group, dict[str, Any]]:
    """A mask store opened to read, and its ``segflow`` attributes; a one-line error when
    ``uri`` is not one."""
    try:
        group = zarr.open_group(store=uri, mode="r", **zarr_options(uri))
        return group, dict(attributes(group)["segflow"])
    except (OSError, KeyError, ValueError, zarr.errors.GroupNotFoundError) as exc:
        raise UserError(uri, f"not a segflow mask store: {first_line(exc)}") from exc


def stores_under(root: str) -> list[str]:
    """The mask stores of an output root (``ROOT/masks/*.zarr``), sorted."""
    masks = OutputRoot(root).masks
    fs, path = filesystem(masks)
    if not fs.exists(path):
        return []
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return [f"{masks}/{n}" for n in names if n.endswith(".zarr")]


def has_instances(uri: str) -> bool:
    group = zarr.open_group(store=uri, mode="r", **zarr_options(uri))
    return "labels" in group and "instances" in group_at(group, "labels")


def mark_complete(uri: str, summary: dict[str, Any], ome: dict[str, Any],
                  labels: dict[str, dict[str, Any]] | None = None) -> None:
    """Write the OME-Zarr metadata (``labels``: name -> the ``ome`` of each image in the
    ``labels`` group) and flag the store complete, last of all (only while this run still
    holds the store's lease)."""
    check_held(uri)
    group = zarr.open_group(store=uri, mode="r+", **zarr_options(uri))
    for name, meta in (labels or {}).items():
        group_at(group, "labels")[name].attrs["ome"] = meta
    if labels:
        group_at(group, "labels").attrs["ome"] = {"version": ome["version"],
                                                  "labels": sorted(labels)}
    group.attrs["ome"] = ome
    meta = dict(attributes(group)["segflow"])
    meta.update(summary, complete=True)
    group.attrs["segflow"] = meta
