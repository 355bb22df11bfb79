"""Polygons of a written mask, exactly those of polygonising the whole mask at once.

``rasterio.features.shapes`` (GDAL's polygoniser, 4-connected) runs on each chunk on a worker,
over that chunk's connected regions (``skimage.measure.label``: cells of one class joined by
faces) or its instances. A region that touches no inner chunk face is complete and goes
straight to the writer. The other pieces go to the client with the region labels on their
chunk's four faces: two pieces on either side of a face are one region where cells face each
other with the same class (scipy's ``connected_components`` merges them, as the instance
labeller does), and shapely's ``union_all`` joins their polygons. Pieces are in pixel
coordinates (integers, so the union is exact), mapped to output coordinates last.

No library merges polygons across tiles (solaris #445 is open); this module is the hand-written
part, and tests compare it to ``shapes`` over the whole mask. Client memory: the faces of the
chunks whose neighbours are not all in yet, and the pieces of regions that cross a chunk face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label

from segflow.tasks.errors import on_worker
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.sources.georef import through

TYPES = {3: "Polygon", 6: "MultiPolygon"}  # shapely type ids


@dataclass(frozen=True)
class Piece:
    """One region's (or instance's) part inside one chunk, in pixel coordinates."""

    key: int  # local region label, or the instance id
    class_id: int
    first: int  # raster-order index in the image of its first cell
    pixels: int
    area: float  # in the reader's base unit (cells when it has none)
    shape: shapely.Geometry


@dataclass(frozen=True)
class Frames:
    """Where polygons go from pixel corners (col, row): output coordinates (a CRS, µm or
    pixels) and, for QuPath, level-0 pixels (None: no QuPath file)."""

    world: Affine
    level0: Affine | None


@dataclass(frozen=True)
class Batch:
    """Finished polygons, column by column: cheap to send from a worker and to write."""

    ids: np.ndarray  # region: raster index of its first cell; object: instance id
    classes: np.ndarray
    pixels: np.ndarray
    area: np.ndarray  # in the reader's base unit (cells when it has none)
    wkb: list[bytes]  # in output coordinates
    bounds: np.ndarray  # (n, 4) xmin, ymin, xmax, ymax of each, in output coordinates
    qupath: list[str] | None  # GeoJSON geometries in level-0 pixels
    types: frozenset[str]  # geometry types present (GeoParquet's geometry_types)

    def __len__(self) -> int:
        return len(self.ids)


def batch(ids: Any, classes: Any, pixels: Any, area: Any, shapes_px: list[shapely.Geometry],
          frames: Frames) -> Batch:
    """Polygons in pixel coordinates, with their columns, as a ``Batch`` in the output frames."""
    geoms = np.empty(len(shapes_px), dtype=object)
    geoms[:] = shapes_px
    world = through(frames.world, geoms)
    return Batch(np.asarray(ids, np.int64), np.asarray(classes, np.int64),
                 np.asarray(pixels, np.int64), np.asarray(area, np.float64),
                 list(shapely.to_wkb(world)), shapely.bounds(world).reshape(-1, 4),
                 None if frames.level0 is None
                 else list(shapely.to_geojson(through(frames.level0, geoms))),
                 frozenset(TYPES[t] for t in np.unique(shapely.get_type_id(world)).tolist()))


@dataclass(frozen=True)
class ChunkPolygons:
    index: tuple[int, ...]
    closed: Batch
    open: list[Piece]
    count: int  # local labels (regions); 0 for instances
    faces: dict[str, np.ndarray]  # local labels along each face (regions only)
    classes: np.ndarray  # class of each local label, index 0 unused (regions only)


def polygonise_chunk(chunk: Chunk, store: MaskStore, instances: bool, shape: tuple[int, ...],
                     row_areas: np.ndarray | None, frames: Frames) -> ChunkPolygons:
    """Polygons of one chunk's regions (or instances): the complete ones as a ``Batch`` in
    the output frames, the ones touching an inner face as pieces in pixel coordinates."""
    return on_worker(_polygonise, chunk, store, instances, shape, row_areas, frames)


def _polygonise(chunk: Chunk, store: MaskStore, instances: bool, shape: tuple[int, ...],
                row_areas: np.ndarray | None, frames: Frames) -> ChunkPolygons:
    classes = store.labels()[chunk.core]
    if instances:
        ids = store.instances()[chunk.core]
        keys, local = np.unique(ids, return_inverse=True)
        local = local.reshape(ids.shape)
        if keys[0] != 0:  # no cell without an object: local labels start at 1
            keys, local = np.concatenate([[0], keys]), local + 1
    else:
        local = label(classes, background=store.nodata, connectivity=1)
        keys = np.arange(local.max() + 1)
    n = len(keys) - 1
    flat = local.ravel()
    pixels = np.bincount(flat, minlength=n + 1)
    if row_areas is None:
        area = pixels.astype(np.float64)
    else:
        weights = np.broadcast_to(row_areas[chunk.core[0]][:, None], local.shape)
        area = np.bincount(flat, weights=weights.ravel(), minlength=n + 1)
    cells = np.flatnonzero(flat)
    _, at = np.unique(flat[cells], return_index=True)
    firsts = cells[at]
    where = np.unravel_index(firsts, local.shape)
    first = np.zeros(n + 1, np.int64)
    first[1:] = np.ravel_multi_index(tuple(i + s.start for i, s in zip(where, chunk.core)),
                                     shape)
    label_class = np.zeros(n + 1, np.int64)
    label_class[1:] = classes.ravel()[firsts]

    r0, c0 = chunk.core[0].start, chunk.core[1].start
    faces = {"top": local[0], "bottom": local[-1], "left": local[:, 0], "right": local[:, -1]}
    inner = {"top": r0 > 0, "bottom": chunk.core[0].stop < shape[0],
             "left": c0 > 0, "right": chunk.core[1].stop < shape[1]}
    touching = np.zeros(n + 1, bool)
    for face, values in faces.items():
        if inner[face]:
            touching[values] = True
    closed: list[tuple[int, shapely.Geometry]] = []
    opened: list[Piece] = []
    for geometry, value in shapes(local.astype(np.int32), mask=local > 0, connectivity=4,
                                  transform=Affine.translation(c0, r0)):
        k = int(value)
        polygon = shapely.geometry.shape(geometry)
        if touching[k]:
            opened.append(Piece(int(keys[k]) if instances else k, int(label_class[k]),
                                int(first[k]), int(pixels[k]), float(area[k]), polygon))
        else:
            closed.append((k, polygon))
    ks = np.array([k for k, _ in closed], np.int64)
    done = batch(keys[ks] if instances else first[ks], label_class[ks], pixels[ks], area[ks],
                 [p for _, p in closed], frames)
    if instances:
        return ChunkPolygons(chunk.index, done, opened, 0, {}, np.empty(0, np.int64))
    return ChunkPolygons(chunk.index, done, opened, n,
                         {f: v.astype(np.int32) for f, v in faces.items() if inner[f]},
                         label_class)


#: what a neighbour needs of an arrived chunk: its id offset, face labels and label classes
Faces = tuple[int, dict[str, np.ndarray], np.ndarray]


class Merger:
    """Joins the open pieces of chunks as they arrive; ``finish`` returns the merged regions."""

    def __init__(self, grid: tuple[int, ...], instances: bool, frames: Frames) -> None:
        self.grid, self.instances, self.frames = grid, instances, frames
        self.next_id = 1
        self.arrived: set[tuple[int, ...]] = set()
        #: arrived chunks whose faces a neighbour still needs: (id offset, faces, classes)
        self.waiting: dict[tuple[int, ...], Faces] = {}
        self.pairs: list[np.ndarray] = []
        self.pieces: list[tuple[int, Piece]] = []

    def add(self, part: ChunkPolygons) -> Batch:
        """Take one chunk's polygons; returns its complete regions."""
        offset, self.next_id = self.next_id, self.next_id + part.count
        self.pieces.extend((piece.key if self.instances else piece.key + offset, piece)
                           for piece in part.open)
        if not self.instances:
            self._match(part, offset)
        return part.closed

    def _match(self, part: ChunkPolygons, offset: int) -> None:
        """Pairs across the faces this chunk shares with chunks already in."""
        self.arrived.add(part.index)
        self.waiting[part.index] = (offset, part.faces, part.classes)
        for axis, (low, high) in enumerate((("bottom", "top"), ("right", "left"))):
            for step in (-1, 1):
                other = self._neighbour(part.index, axis, step)
                if other in self.waiting:
                    a, b = (other, part.index) if step < 0 else (part.index, other)
                    self._touch(self.waiting[a], self.waiting[b], low, high)
        for index in (part.index, *self._neighbours(part.index)):
            if index in self.waiting and all(n in self.arrived for n in self._neighbours(index)):
                del self.waiting[index]

    def _neighbour(self, index: tuple[int, ...], axis: int, step: int) -> tuple[int, ...] | None:
        moved = list(index)
        moved[axis] += step
        return tuple(moved) if 0 <= moved[axis] < self.grid[axis] else None

    def _neighbours(self, index: tuple[int, ...]) -> list[tuple[int, ...]]:
        found = (self._neighbour(index, axis, step) for axis in (0, 1) for step in (-1, 1))
        return [n for n in found if n is not None]

    def _touch(self, a: Faces, b: Faces, low: str, high: str) -> None:
        """Pairs of labels facing each other with the same class across ``a``'s ``low`` face
        and ``b``'s ``high`` face (``b`` lies after ``a`` along the axis)."""
        (off_a, faces_a, classes_a), (off_b, faces_b, classes_b) = a, b
        here, there = faces_a[low], faces_b[high]
        same = (here > 0) & (there > 0) & (classes_a[here] == classes_b[there])
        self.pairs.append(np.stack([here[same] + off_a, there[same] + off_b], axis=1))

    def finish(self) -> Batch:
        """The regions whose pieces lay in more than one chunk, each as one polygon."""
        ids = np.array([k for k, _ in self.pieces], np.int64)
        nodes, node_of_piece = np.unique(ids, return_inverse=True)
        if self.instances or not len(ids):
            group = node_of_piece
        else:
            pairs = np.unique(np.concatenate([np.empty((0, 2), np.int64), *self.pairs]), axis=0)
            a, b = np.searchsorted(nodes, pairs[:, 0]), np.searchsorted(nodes, pairs[:, 1])
            graph = coo_matrix((np.ones(len(pairs)), (a, b)), shape=(len(nodes), len(nodes)))
            _, component = connected_components(graph, directed=False)
            group = component[node_of_piece]
        order = np.argsort(group, kind="stable")
        columns: list[list[Any]] = [[], [], [], [], []]
        for members in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
            parts = [self.pieces[i][1] for i in members]
            if not parts:
                continue
            head = min(parts, key=lambda p: p.first)
            for column, value in zip(columns, (
                    head.key if self.instances else head.first, head.class_id,
                    sum(p.pixels for p in parts), sum(p.area for p in parts),
                    shapely.union_all([p.shape for p in parts]))):
                column.append(value)
        self.pieces.clear()
        return batch(*columns, frames=self.frames)
