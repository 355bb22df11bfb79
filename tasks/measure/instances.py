"""Instance labelling across chunk borders, the dask-image ``ndmeasure.label`` way.

1. Each chunk labels the connected components of its thing-class cells (faces only, and two
   cells join only when they have the same class; stuff and nodata are 0), writes these local
   labels to ``instances`` and returns each label's class and first cell.
2. The client offsets local labels into provisional global ids; workers read the one-cell
   slabs on both sides of every chunk face and return the pairs of ids that touch with equal
   class; scipy's ``connected_components`` (a library union-find) merges them.
3. Objects are numbered 1..N in raster order of their first cell, exactly as
   ``skimage.measure.label`` numbers a whole image, so the chunked ids equal a whole-image
   labelling; each chunk rewrites its labels through its slice of the lookup table and
   returns its partial measurements.

``measure_instances`` re-measures an ``instances`` array already labelled (a reused run).

Ids are uint32: at most 4,294,967,295 objects per image. Client memory is O(objects): label
counts, face pairs and the lookup table, never pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from distributed import Client
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label

from segflow.tasks.errors import UserError
from segflow.tasks.mask.store import MaskStore, create_instances
from segflow.tasks.measure.objects import Instances, InstanceSums, chunk_sums, merge_sums
from segflow.tasks.plan.grid import Chunk, Plan
from segflow.tasks.runtime.cluster import broadcast
from segflow.tasks.runtime.zarr_nodes import read_cells

MAX_ID = int(np.iinfo(np.uint32).max)


@dataclass(frozen=True)
class LocalLabels:
    """One chunk's components: local label k is row k - 1."""

    classes: np.ndarray  # (count,) class id of each label
    first: np.ndarray  # (count,) raster-order linear index in the image of its first cell

    @property
    def count(self) -> int:
        return len(self.classes)


def label_chunk(chunk: Chunk, store: MaskStore, things: list[int],
                shape: tuple[int, ...]) -> LocalLabels:
    """Label one chunk's thing objects and write the local labels (runs on a worker)."""
    classes = read_cells(store.labels(), chunk.core)
    # class + 1: a thing class with id 0 (k-means' first cluster) is not the background
    objects = np.where(np.isin(classes, things), classes.astype(np.int32) + 1, 0)
    local = label(objects, background=0, connectivity=1)
    cells = np.flatnonzero(local)
    _, at = np.unique(local.ravel()[cells], return_index=True)
    first = cells[at]  # np.unique sorts stably: the first (raster-order) cell of each label
    if len(first):
        store.instances("r+")[chunk.core] = local.astype(np.uint32)
    where = np.unravel_index(first, local.shape)
    origin = tuple(i + s.start for i, s in zip(where, chunk.core))
    return LocalLabels(classes=classes.ravel()[first].astype(np.int64),
                       first=np.ravel_multi_index(origin, shape).astype(np.int64))


def face_pairs(chunk: Chunk, offset: int, neighbours: list[tuple[int, int]],
               store: MaskStore) -> np.ndarray:
    """Provisional id pairs (k, 2) that touch with equal class across this chunk's upper faces;
    ``neighbours`` holds (axis, id offset) of the next chunk along each axis to check."""
    ids, classes = store.instances(), store.labels()
    found = [np.empty((0, 2), np.int64)]
    for axis, other in neighbours:
        stop = chunk.core[axis].stop
        slab = tuple(slice(stop - 1, stop + 1) if a == axis else s
                     for a, s in enumerate(chunk.core))
        here, there = np.moveaxis(read_cells(ids, slab).astype(np.int64), axis, 0)
        kind = np.moveaxis(read_cells(classes, slab), axis, 0)
        touch = (here > 0) & (there > 0) & (kind[0] == kind[1])
        found.append(np.stack([here[touch] + offset, there[touch] + other], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def relabel_chunk(chunk: Chunk, lut: np.ndarray, store: MaskStore,
                  row_areas: np.ndarray | None) -> InstanceSums:
    """Rewrite one chunk's local labels as final ids through ``lut`` (local -> final, lut[0] =
    0) and return its partial measurements. Not idempotent: it rewrites in place."""
    array = store.instances("r+")
    local = read_cells(array, chunk.core)
    array[chunk.core] = lut[local]
    return chunk_sums(local, lut[1:], tuple(s.start for s in chunk.core), row_areas)


def _final_ids(labels: list[LocalLabels], pairs: np.ndarray) -> np.ndarray:
    """Lookup table provisional id -> final id (index 0 -> 0): merged components numbered in
    raster order of their first cell."""
    total = sum(lab.count for lab in labels)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                       shape=(total + 1, total + 1))
    _, component = connected_components(graph, directed=False)
    _, component = np.unique(component[1:], return_inverse=True)
    first = np.concatenate([lab.first for lab in labels] or [np.empty(0, np.int64)])
    earliest = np.full(component.max(initial=-1) + 1, np.iinfo(np.int64).max)
    np.minimum.at(earliest, component, first)
    number = np.empty(len(earliest), np.int64)
    number[np.argsort(earliest)] = np.arange(1, len(earliest) + 1)
    return np.concatenate([[0], number[component]])


def label_instances(client: Client, store: MaskStore, plan: Plan, things: list[int],
                    row_areas: np.ndarray | None) -> Instances:
    """Label every thing object of the written mask across chunks into ``instances`` and
    measure it; ``row_areas`` is the reader's ``cell_measure()`` (None: no physical size)."""
    create_instances(store)
    labels: list[LocalLabels] = client.gather(client.map(
        label_chunk, plan.chunks, store=store, things=things, shape=plan.shape, pure=False))
    counts = np.array([lab.count for lab in labels], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = {c.index: i for i, c in enumerate(plan.chunks)}
    jobs = []
    for i, chunk in enumerate(plan.chunks):
        neighbours = []
        for axis in range(len(plan.shape)):
            j = position.get(tuple(k + (a == axis) for a, k in enumerate(chunk.index)))
            if counts[i] and j is not None and counts[j]:
                neighbours.append((axis, int(offsets[j])))
        if neighbours:
            jobs.append((chunk, int(offsets[i]), neighbours))
    found = client.gather(client.map(face_pairs, *zip(*jobs), store=store, pure=False)
                          if jobs else [])
    lut = _final_ids(labels, np.concatenate(found or [np.empty((0, 2), np.int64)]))
    n_objects = int(lut.max(initial=0))
    if n_objects > MAX_ID:
        raise UserError(store.uri, f"{n_objects} objects exceed the uint32 id limit {MAX_ID}")
    lut = lut.astype(np.uint32)
    todo = [i for i in range(len(plan.chunks)) if counts[i]]
    parts = client.gather(client.map(
        relabel_chunk, [plan.chunks[i] for i in todo],
        [np.concatenate([[0], lut[offsets[i] + 1:offsets[i] + counts[i] + 1]]).astype(np.uint32)
         for i in todo],
        store=store, row_areas=broadcast(client, row_areas), pure=False))
    classes = np.zeros(n_objects, np.int64)
    classes[lut[1:].astype(np.int64) - 1] = np.concatenate(
        [lab.classes for lab in labels] or [np.empty(0, np.int64)])
    return Instances(class_ids=classes, sums=merge_sums(parts, n_objects, len(plan.shape)))


def measure_chunk(chunk: Chunk, store: MaskStore,
                  row_areas: np.ndarray | None) -> tuple[InstanceSums, np.ndarray]:
    """Partial measurements of one chunk of final ids, and the class of each id found."""
    ids = read_cells(store.instances(), chunk.core)
    found, first, local = np.unique(ids.ravel(), return_index=True, return_inverse=True)
    local = local.reshape(ids.shape) + (found[0] != 0)  # 0 stays 0 only where there is one
    keep = found != 0
    classes = read_cells(store.labels(), chunk.core).ravel()[first[keep]].astype(np.int64)
    return chunk_sums(local, found[keep], tuple(s.start for s in chunk.core), row_areas), classes


def measure_instances(client: Client, store: MaskStore, plan: Plan,
                      row_areas: np.ndarray | None) -> Instances:
    """Measure the objects of an ``instances`` array labelled by an earlier run."""
    parts = client.gather(client.map(measure_chunk, plan.chunks, store=store,
                                     row_areas=broadcast(client, row_areas), pure=False))
    n_objects = max((int(sums.ids.max()) for sums, _ in parts if len(sums.ids)), default=0)
    classes = np.zeros(n_objects, np.int64)
    for sums, kinds in parts:
        classes[sums.ids - 1] = kinds
    return Instances(class_ids=classes,
                     sums=merge_sums([sums for sums, _ in parts], n_objects, len(plan.shape)))

