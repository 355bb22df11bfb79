"""Polygons of a written mask, exactly those of polygonising the whole mask at once.

``rasterio.features.shapes`` (GDAL's polygoniser, 4-connected) runs on each chunk on a worker,
over that chunk's connected regions (``skimage.measure.label``: cells of one class joined by
faces) or its instances. A region that touches no inner chunk face is complete: the worker
maps it to output coordinates and sends it as columns. The other pieces go to the client with
the region labels on their chunk's faces: two pieces on either side of a face are one region
where cells face each other with the same class (a union-find joins them; objects are joined by
their id), and once every face a region's pieces touch has had its neighbour chunk arrive,
shapely's ``union_all`` makes its polygon. Pieces are in pixel coordinates (integers, so the
union is exact), mapped to output coordinates last.

No library merges polygons across tiles (solaris #445 is open); this module is the hand-written
part, and tests compare it to ``shapes`` over the whole mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from skimage.measure import label

from segflow.tasks.errors import on_worker
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.runtime.zarr_nodes import read_cells
from segflow.tasks.sources.georef import through

TYPES = {3: "Polygon", 6: "MultiPolygon"}  # shapely type ids
#: a chunk's faces, and for each: the axis, the step to the neighbour and the facing face
FACES = ("top", "bottom", "left", "right")
ACROSS = {"top": (0, -1, "bottom"), "bottom": (0, 1, "top"), "left": (1, -1, "right"),
          "right": (1, 1, "left")}


@dataclass(frozen=True)
class Piece:
    """One region's (or instance's) part inside one chunk, in pixel coordinates."""

    key: int  # local region label, or the instance id
    class_id: int
    first: int  # raster-order index in the image of its first cell
    pixels: int
    area: float  # in the reader's base unit (cells when it has none)
    shape: shapely.Geometry
    faces: tuple[str, ...]  # the inner chunk faces it touches


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


def polygonise_chunk(chunk: Chunk, store: MaskStore, totals: np.ndarray | None,
                     shape: tuple[int, ...], row_areas: np.ndarray | None,
                     frames: Frames) -> ChunkPolygons:
    """Polygons of one chunk's regions (or, with ``totals``, the cells of each object id, its
    objects): the complete ones as a ``Batch`` in the output frames, the others as pieces in
    pixel coordinates."""
    return on_worker(_polygonise, chunk, store, totals, shape, row_areas, frames)


def _polygonise(chunk: Chunk, store: MaskStore, totals: np.ndarray | None,
                shape: tuple[int, ...], row_areas: np.ndarray | None,
                frames: Frames) -> ChunkPolygons:
    classes = read_cells(store.labels(), chunk.core)
    instances = totals is not None
    if instances:
        ids = read_cells(store.instances(), chunk.core)
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
    area: np.ndarray
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
    touching = np.zeros((n + 1, len(FACES)), bool)
    for f, face in enumerate(FACES):
        if inner[face]:
            touching[faces[face], f] = True
    found: dict[int, list[shapely.Geometry]] = {}
    for geometry, value in shapes(local.astype(np.int32), mask=local > 0, connectivity=4,
                                  transform=Affine.translation(c0, r0)):
        found.setdefault(int(value), []).append(shapely.geometry.shape(geometry))
    closed: list[tuple[int, shapely.Geometry]] = []
    opened: list[Piece] = []
    for k, parts in found.items():  # an object of a model may lie in several parts
        polygon = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        # a region is whole unless it touches an inner face; an object when it has all its
        # cells here (its parts need not touch each other, or a face)
        partial = pixels[k] < totals[keys[k]] if totals is not None else touching[k].any()
        if partial:
            opened.append(Piece(int(keys[k]) if instances else k, int(label_class[k]),
                                int(first[k]), int(pixels[k]), float(area[k]), polygon,
                                tuple(f for f, t in zip(FACES, touching[k]) if t)))
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


class Merger:
    """Joins the open pieces of chunks as they arrive, and hands a region back as soon as it is
    whole: when every inner face that any of its pieces touches has had its neighbour chunk
    arrive. Pieces are nodes of a union-find (provisional ids for regions); each root counts
    the faces its pieces still wait on. An object (``totals``: cells per object id) is whole
    once its pieces hold all its cells.

    Client memory is the faces of arrived chunks whose neighbours are not all in, and the
    pieces of regions not yet whole: with chunks coming back about in row order, about one row
    of chunks' worth, plus any region that truly spans the image (its polygon is that big)."""

    def __init__(self, grid: tuple[int, ...], totals: np.ndarray | None,
                 frames: Frames) -> None:
        self.grid, self.totals, self.frames = grid, totals, frames
        self.instances = totals is not None
        self.cells: dict[int, int] = {}  # object id -> cells of its pieces in so far
        self.next_id = 1
        self.arrived: set[tuple[int, ...]] = set()
        #: arrived chunks whose neighbours are not all in: id offset, face labels, classes,
        #: and the nodes of its open pieces touching each face (one entry per piece)
        self.waiting: dict[tuple[int, ...], tuple[int, dict[str, np.ndarray], np.ndarray,
                                                  dict[str, list[int]]]] = {}
        self.parent: dict[int, int] = {}
        self.members: dict[int, list[Piece]] = {}  # root -> its pieces
        self.pending: dict[int, int] = {}  # root -> faces its pieces still wait on

    def add(self, part: ChunkPolygons) -> list[Batch]:
        """Take one chunk's polygons; returns its complete regions and those it completed."""
        if self.totals is not None:
            return self._add_objects(part, self.totals)
        offset, self.next_id = self.next_id, self.next_id + part.count
        touching: dict[str, list[int]] = {face: [] for face in FACES}
        touched: set[int] = set()
        for piece in part.open:
            node = piece.key if self.instances else piece.key + offset
            root = self._find(node)
            self.members.setdefault(root, []).append(piece)
            for face in piece.faces:
                touching[face].append(node)
                if self._neighbour(part.index, face) not in self.arrived:
                    self.pending[root] = self.pending.get(root, 0) + 1
            touched.add(node)
        for face, (_, _, facing) in ACROSS.items():
            other = self._neighbour(part.index, face)
            if other is None or other not in self.arrived:
                continue
            off_o, faces_o, classes_o, touching_o = self.waiting[other]
            for node in touching_o[facing]:  # the other side no longer waits on this face
                root = self._find(node)
                self.pending[root] -= 1
                touched.add(root)
            if not self.instances:
                here, there = part.faces[face], faces_o[facing]
                same = (here > 0) & (there > 0) & (part.classes[here] == classes_o[there])
                for a, b in zip((here[same] + offset).tolist(), (there[same] + off_o).tolist()):
                    self._union(a, b)
        self.arrived.add(part.index)
        self.waiting[part.index] = (offset, part.faces, part.classes, touching)
        for index in (part.index, *(self._neighbour(part.index, f) for f in FACES)):
            if index in self.waiting and all(n is None or n in self.arrived for n in
                                             (self._neighbour(index, f) for f in FACES)):
                del self.waiting[index]
        whole = {self._find(n) for n in touched}
        done = [self._whole(root) for root in whole if self.pending.get(root, 0) == 0
                and root in self.members]
        return [part.closed, *([self._batch(done)] if done else [])]

    def _add_objects(self, part: ChunkPolygons, totals: np.ndarray) -> list[Batch]:
        for piece in part.open:
            self.members.setdefault(piece.key, []).append(piece)
            self.cells[piece.key] = self.cells.get(piece.key, 0) + piece.pixels
        done = [self._whole(key) for key in {p.key for p in part.open}
                if self.cells[key] == totals[key]]
        return [part.closed, *([self._batch(done)] if done else [])]

    def finish(self) -> Batch:
        """Whatever is still open once every chunk is in (nothing, when all arrived)."""
        return self._batch([self._whole(root) for root in list(self.members)])

    def _neighbour(self, index: tuple[int, ...], face: str) -> tuple[int, ...] | None:
        axis, step, _ = ACROSS[face]
        moved = list(index)
        moved[axis] += step
        return tuple(moved) if 0 <= moved[axis] < self.grid[axis] else None

    def _find(self, node: int) -> int:
        root = self.parent.setdefault(node, node)
        while root != self.parent[root]:
            root = self.parent[root]
        while node != root:  # path compression
            self.parent[node], node = root, self.parent[node]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if len(self.members.get(ra, ())) < len(self.members.get(rb, ())):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members.setdefault(ra, []).extend(self.members.pop(rb, []))
        self.pending[ra] = self.pending.get(ra, 0) + self.pending.pop(rb, 0)

    def _whole(self, root: int) -> tuple[int, int, int, float, shapely.Geometry]:
        """One finished region from its pieces; forgets them."""
        parts = self.members.pop(root)
        self.pending.pop(root, None)
        self.cells.pop(root, None)
        head = min(parts, key=lambda p: p.first)
        # pieces in raster order, not arrival order: the union's vertex order, and so the
        # file's bytes, are the same on every run
        ordered = sorted(parts, key=lambda p: (p.first, p.pixels))
        return (head.key if self.instances else head.first, head.class_id,
                sum(p.pixels for p in parts), sum(p.area for p in parts),
                shapely.union_all([p.shape for p in ordered]))

    def _batch(self, regions: list[tuple[int, int, int, float, shapely.Geometry]]) -> Batch:
        ids, classes, pixels, area, shapes_px = ([list(c) for c in zip(*regions)] if regions
                                                 else [[], [], [], [], []])
        return batch(ids, classes, pixels, area, shapes_px, frames=self.frames)
