"""Instance models across chunks: each chunk keeps the objects it owns, then every chunk's core
is painted from the objects its neighbours and it own (models/instance.py states the rule).

1. Chunk stage (``segment_objects``, on the worker that read the chunk): the model finds the
   objects of the chunk's read window; the owned ones (canonical point in the core) are written
   whole, as boxes of packed bits, to ``objects/<chunk>`` in the store, and the core gets a
   preview of its classes. An owned object may reach into a neighbour's core: it never reaches
   further, because the halo (>= the object size) is at most one chunk.
2. Label stage (``paint_instances``): the client numbers all owned objects 1..N in raster
   order of their first cell (a whole-image labelling's order) from the files' headers, O(objects);
   each chunk then paints its core from the files of its 3^d neighbourhood, by score, and
   writes ``0`` and ``instances`` and returns its partial measurements.

The owned objects stay in the store: a resumed run paints again from them without re-running
the model.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from distributed import Client
from scipy import ndimage

from segflow.tasks.errors import UserError, io_error, retry_transient
from segflow.tasks.mask.store import DONE_WRITTEN, MaskStore, create_instances
from segflow.tasks.measure.instances import MAX_ID
from segflow.tasks.measure.objects import Instances, InstanceSums, chunk_sums, merge_sums
from segflow.tasks.models.instance import InstanceModel, Objects, classes_of, owned, paint
from segflow.tasks.plan.grid import Chunk, Plan
from segflow.tasks.runtime.cluster import broadcast
from segflow.tasks.runtime.storage import zarr_options
from segflow.tasks.runtime.zarr_nodes import read_cells


@dataclass(frozen=True)
class Owned:
    """The objects one chunk owns, each as a box of packed bits in image coordinates."""

    canonical: np.ndarray  # (n,) raster index in the image of the object's first cell
    classes: np.ndarray  # (n,)
    scores: np.ndarray  # (n,) float32
    lo: np.ndarray  # (n, ndim) box start
    size: np.ndarray  # (n, ndim) box shape
    bits: np.ndarray  # packed masks of all boxes, one after the other
    offsets: np.ndarray  # (n + 1,) where each object's bits start in ``bits`` (bytes)
    cut: int  # owned objects that reach the window's edge
    capped: int = 0  # model calls whose detections hit the model's cap (some may be missing)

    def mask(self, k: int) -> np.ndarray:
        n = int(np.prod(self.size[k]))
        packed = self.bits[self.offsets[k]:self.offsets[k + 1]]
        return np.unpackbits(packed, count=n).astype(bool).reshape(self.size[k])


def own(objects: Objects, chunk: Chunk, shape: tuple[int, ...]) -> Owned:
    """The objects of ``chunk``'s read window that its core owns, in image coordinates."""
    keep = owned(objects, chunk.crop)
    boxes = ndimage.find_objects(objects.labels, max_label=objects.count)
    lo, size, packed, canonical = [], [], [], []
    keep = np.array([k for k in keep if boxes[k] is not None], np.int64)
    for k in keep:
        box = boxes[k]
        mask = objects.labels[box] == k + 1
        start = [r.start + b.start for r, b in zip(chunk.read, box)]
        first = np.unravel_index(int(np.argmax(mask)), mask.shape)  # raster order in a box
        canonical.append(np.ravel_multi_index(tuple(s + f for s, f in zip(start, first)),
                                              shape))
        lo.append(start)
        size.append(mask.shape)
        packed.append(np.packbits(mask.ravel()))
    ndim = len(shape)
    return Owned(canonical=np.asarray(canonical, np.int64), classes=objects.classes[keep],
                 scores=objects.scores[keep].astype(np.float32),
                 lo=np.asarray(lo, np.int64).reshape(-1, ndim),
                 size=np.asarray(size, np.int64).reshape(-1, ndim),
                 bits=np.concatenate(packed or [np.empty(0, np.uint8)]),
                 offsets=np.concatenate([[0], np.cumsum([len(p) for p in packed])]).astype(
                     np.int64),
                 cut=int(objects.cut[keep].sum()), capped=objects.capped)


def objects_path(index: tuple[int, ...]) -> str:
    """Where a chunk's owned objects lie in the store: one small uint8 array (an ``.npz``'s
    bytes) per chunk, which only that chunk's task writes, in the ``objects`` group."""
    return f"objects/{'-'.join(map(str, index))}"


def write_owned(store: MaskStore, index: tuple[int, ...], found: Owned) -> None:
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in found.__dict__.items()}
    np.savez(buffer, **arrays)
    raw = np.frombuffer(buffer.getvalue(), np.uint8)
    array = zarr.create_array(store=store.uri, name=objects_path(index), shape=raw.shape,
                              chunks=raw.shape, dtype="uint8", overwrite=True,
                              **zarr_options(store.uri))
    array[:] = raw


def read_owned(store: MaskStore, index: tuple[int, ...]) -> Owned | None:
    """A chunk's owned objects; None for a chunk that wrote none (skipped: glass, nodata)."""
    try:
        raw = read_cells(zarr.open_array(store=store.uri, path=objects_path(index), mode="r",
                                         **zarr_options(store.uri)), slice(None))
    except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError):
        return None
    with np.load(io.BytesIO(raw.tobytes())) as data:
        return Owned(**{k: (data[k].item() if data[k].ndim == 0 else data[k])
                        for k in data.files})


def segment_objects(model: InstanceModel, chunk: Chunk, pixels: np.ndarray, valid: np.ndarray,
                    shape: tuple[int, ...], store: MaskStore, source: str) -> np.ndarray:
    """Find the chunk's objects, keep its own (written to the store) and return the core's
    preview classes (objects as this window sees them; painted for good in the label stage)."""
    objects = model.predict_objects(pixels, valid, chunk.read, shape)
    found = own(objects, chunk, shape)
    if found.cut and model.on_cut == "error":
        raise UserError(source, f"{found.cut} object(s) of chunk {chunk.index} reach the "
                                f"read window's edge: raise stats.max_object (now "
                                f"{model.max_object} px) or set stats.on_cut=warn")
    try:
        retry_transient(lambda: write_owned(store, chunk.index, found))
    except OSError as exc:  # a full disk or a refused write: the store's, not the source's
        raise io_error(store.uri, "cannot write the owned objects", exc) from exc
    return classes_of(objects, chunk.crop)


@dataclass(frozen=True)
class Header:
    """What the client needs of a chunk's objects to number them."""

    canonical: np.ndarray
    classes: np.ndarray
    cut: int
    capped: int


def read_header(chunk: Chunk, store: MaskStore) -> Header | None:
    """The chunk's header; None for a chunk skipped unread (glass, all nodata)."""
    found = read_owned(store, chunk.index)
    if found is None:
        if store.progress()[chunk.index] == DONE_WRITTEN:
            raise UserError(store.uri, f"the objects of chunk {chunk.index} are missing "
                                       "though it is recorded written: delete the store and "
                                       "run again")
        return None
    return Header(found.canonical, found.classes, found.cut, found.capped)


def neighbourhood(index: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [tuple(i + d for i, d in zip(index, step))
            for step in itertools.product((-1, 0, 1), repeat=len(index))]


def paint_chunk(chunk: Chunk, sources: list[tuple[tuple[int, ...], np.ndarray]],
                store: MaskStore, things: list[int], row_areas: np.ndarray | None
                ) -> InstanceSums:
    """Paint the chunk's core from the owned objects of ``sources`` (chunk index, their final
    ids), write its classes and ids, and return its partial measurements."""
    core = chunk.core
    shape = tuple(s.stop - s.start for s in core)
    boxes: list[tuple[tuple[slice, ...], np.ndarray]] = []
    scores, ids, classes = [], [], []
    for index, final in sources:
        found = read_owned(store, index)
        if found is None:
            raise UserError(store.uri, f"the objects of chunk {index} disappeared mid-run")
        for k in range(len(final)):
            lo, hi = found.lo[k], found.lo[k] + found.size[k]
            cut = [(max(a, c.start), min(b, c.stop)) for a, b, c in zip(lo, hi, core)]
            if any(a >= b for a, b in cut):
                continue
            mask = found.mask(k)[tuple(slice(a - s, b - s) for (a, b), s in zip(cut, lo))]
            boxes.append((tuple(slice(a - c.start, b - c.start) for (a, b), c in
                                zip(cut, core)), mask))
            scores.append(found.scores[k])
            ids.append(final[k])
            classes.append(found.classes[k])
    labels = paint(shape, boxes, np.asarray(scores, np.float32), np.asarray(ids, np.int64))
    preview = read_cells(store.labels(), core)
    valid = preview != store.nodata
    labels[~valid] = 0
    lut_id = np.concatenate([[0], ids]).astype(np.uint32)
    lut_class = np.concatenate([[0], classes]).astype(preview.dtype)
    out = np.where(np.isin(preview, things), 0, preview).astype(preview.dtype)
    out = np.where(labels > 0, lut_class[labels], out)
    if (out != preview).any():
        store.labels("r+")[core] = out
    instances = lut_id[labels]
    if labels.any():  # the array was created empty (0)
        store.instances("r+")[core] = instances
    found_ids, local = np.unique(instances, return_inverse=True)
    local = local.reshape(shape) + (found_ids[0] != 0)  # 0 stays 0 only where there is one
    return chunk_sums(local, found_ids[found_ids != 0], tuple(s.start for s in core), row_areas)


def paint_instances(client: Client, model: InstanceModel, store: MaskStore, plan: Plan,
                    row_areas: np.ndarray | None) -> Instances:
    """Number every owned object 1..N in raster order of its first cell, paint every chunk
    that any object reaches, and measure the objects."""
    create_instances(store)
    headers: list[Header | None] = client.gather(client.map(
        read_header, plan.chunks, store=store, pure=False))
    present = [(c.index, h) for c, h in zip(plan.chunks, headers) if h is not None]
    canonical = np.concatenate([h.canonical for _, h in present] or [np.empty(0, np.int64)])
    position = np.concatenate([np.full(len(h.canonical), i) for i, (_, h) in enumerate(present)]
                              or [np.empty(0, np.int64)])
    order = np.lexsort((np.arange(len(canonical)), position, canonical))
    final = np.empty(len(canonical), np.int64)
    final[order] = np.arange(1, len(canonical) + 1)
    if len(final) > MAX_ID:
        raise UserError(store.uri, f"{len(final)} objects exceed the uint32 id limit {MAX_ID}")
    starts = np.concatenate([[0], np.cumsum([len(h.canonical) for _, h in present])])
    ids_of = {index: final[starts[i]:starts[i + 1]] for i, (index, _) in enumerate(present)}
    # every chunk: one nobody's object reaches still has its preview's thing cells cleared
    sources = [[(i, ids_of[i]) for i in neighbourhood(chunk.index) if i in ids_of
                and len(ids_of[i])] for chunk in plan.chunks]
    parts = client.gather(client.map(
        paint_chunk, plan.chunks, sources, store=store, things=model.thing_classes(),
        row_areas=broadcast(client, row_areas), pure=False))
    classes = np.zeros(len(final), np.int64)
    classes[final - 1] = np.concatenate([h.classes for _, h in present]
                                        or [np.empty(0, np.int64)])
    sums = merge_sums(parts, len(final), len(plan.shape))
    gone = sums.pixels == 0  # lost every cell to higher-scored objects of other chunks
    if gone.any():
        sums, classes = _compact(client, store, plan, sums, classes, gone)
    return Instances(class_ids=classes, sums=sums, cut=sum(h.cut for _, h in present),
                     capped=sum(h.capped for _, h in present))


def _compact(client: Client, store: MaskStore, plan: Plan, sums: InstanceSums,
             classes: np.ndarray, gone: np.ndarray) -> tuple[InstanceSums, np.ndarray]:
    """Renumber the objects that kept cells 1..M (same order), in the store and the sums."""
    keep = ~gone
    lut = np.zeros(len(gone) + 1, np.uint32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    client.gather(client.map(_relabel, plan.chunks, lut=broadcast(client, lut), store=store,
                             pure=False))
    kept = InstanceSums(ids=np.arange(1, int(keep.sum()) + 1), pixels=sums.pixels[keep],
                        area=sums.area[keep], index_sum=sums.index_sum[keep],
                        lo=sums.lo[keep], hi=sums.hi[keep])
    return kept, classes[keep]


def _relabel(chunk: Chunk, lut: np.ndarray, store: MaskStore) -> None:
    array = store.instances("r+")
    array[chunk.core] = lut[read_cells(array, chunk.core)]
