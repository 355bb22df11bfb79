"""One spatial reference value: where a grid's cells lie (a CRS and affine, µm per pixel, or a
voxel-to-RAS affine). The reader makes it, the mask store keeps it (``to_attrs``), and
``segflow change``, ``open_mask``, the exports and the OME metadata read it back
(``from_attrs``), so nobody rebuilds it from a modality name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pyproj import CRS

from segflow.tasks.sources.georef import Coordinates, Georef


def world_axes(affine: np.ndarray) -> np.ndarray:
    """The world axis (0 x, 1 y, 2 z) each voxel axis of a voxel-to-RAS affine follows
    (nibabel's choice; the closest one for an oblique volume)."""
    from nibabel.orientations import io_orientation

    return io_orientation(affine)[:, 0].astype(int)


class SpatialRef(ABC):
    """A grid's place in the world; subclasses for each kind of reference."""

    modality: ClassVar[str]
    #: what one cell's size (``row_sizes``) measures: m2, um2 or mm3
    base_unit: ClassVar[str]
    _kinds: ClassVar[dict[str, type[SpatialRef]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SpatialRef._kinds[cls.modality] = cls

    @staticmethod
    def from_attrs(attrs: dict[str, Any]) -> SpatialRef:
        """The reference a store's ``spatial`` attribute holds (``to_attrs``'s output)."""
        kind = SpatialRef._kinds.get(str(attrs.get("modality")), PixelRef)
        try:
            return kind.read(attrs)
        except KeyError:  # a modality whose reader recorded no reference: pixels
            return PixelRef.read(attrs)

    @classmethod
    @abstractmethod
    def read(cls, attrs: dict[str, Any]) -> SpatialRef:
        """This kind of reference from its attributes."""

    @abstractmethod
    def to_attrs(self) -> dict[str, Any]:
        """JSON attributes for the store, ``modality`` included."""

    @abstractmethod
    def row_sizes(self, height: int) -> np.ndarray | None:
        """The size of one cell in each row, in ``base_unit`` (None: no physical size)."""

    @abstractmethod
    def cell_size(self, ndim: int) -> tuple[str | None, list[float]]:
        """Size of one cell along each axis and its UDUNITS-2 unit (None when unknown)."""

    def origin(self, ndim: int) -> list[float]:
        """Where cell 0 lies along each axis of the OME coordinate transform."""
        return [0.0] * ndim

    def grid_mapping(self) -> dict[str, Any] | None:
        """The CF grid mapping, for georeferenced grids."""
        return None

    def coordinates(self, shape: tuple[int, ...]) -> Coordinates:
        """1-D coordinates of cell centres by dim, for the store."""
        return {}

    def world(self, dims: tuple[str, ...], shape: tuple[int, ...], factor: int
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Cell-centre coordinates by dim of a grid ``factor`` times coarser than level 0 (a
        pyramid level), and attributes saying their unit."""
        size = [float(factor)] * len(dims)
        return ({d: (np.arange(n) + 0.5) * s for d, n, s in zip(dims, shape, size, strict=True)},
                {"units": "pixel"})

    def difference(self, other: SpatialRef) -> str | None:
        """What makes two grids' references differ, or None."""
        if self.modality != other.modality:
            return f"modality {self.modality} vs {other.modality}"
        return None


@dataclass(frozen=True)
class RasterRef(SpatialRef):
    """A CRS (WKT; None for none) and an affine (rasterio's order a, b, c, d, e, f)."""

    crs_wkt: str | None
    transform: tuple[float, ...]

    modality: ClassVar[str] = "raster"
    base_unit: ClassVar[str] = "m2"

    @property
    def georef(self) -> Georef:
        return Georef(self.crs_wkt, self.transform)

    @classmethod
    def read(cls, attrs: dict[str, Any]) -> RasterRef:
        return cls(attrs.get("crs_wkt"), tuple(float(v) for v in attrs["transform"][:6]))

    def to_attrs(self) -> dict[str, Any]:
        return {"modality": self.modality, "crs_wkt": self.crs_wkt,
                "transform": list(self.transform),
                "transform_order": "affine a b c d e f (x = a*col + b*row + c)"}

    def row_sizes(self, height: int) -> np.ndarray | None:
        return self.georef.row_areas_m2(height)

    def cell_size(self, ndim: int) -> tuple[str | None, list[float]]:
        return self.georef.cell_size()

    def grid_mapping(self) -> dict[str, Any] | None:
        return self.georef.grid_mapping()

    def coordinates(self, shape: tuple[int, ...]) -> Coordinates:
        return self.georef.pixel_centres(*shape)

    def world(self, dims: tuple[str, ...], shape: tuple[int, ...], factor: int
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        t = self.georef.affine
        cols, rows = np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5
        return ({"y": t.f + t.e * factor * rows, "x": t.c + t.a * factor * cols}, {})

    def difference(self, other: SpatialRef) -> str | None:
        differs = super().difference(other)
        if differs or not isinstance(other, RasterRef):
            return differs
        ca, cb = self.georef.crs, other.georef.crs
        if (ca is None) != (cb is None) or (ca is not None and not ca.equals(CRS(cb))):
            return f"CRS {ca.name if ca else None} vs {cb.name if cb else None}"
        if not np.allclose(self.transform, other.transform, rtol=1e-9, atol=1e-9):
            return f"transform {list(self.transform)} vs {list(other.transform)}"
        return None


@dataclass(frozen=True)
class SlideRef(SpatialRef):
    """µm per pixel of the level read (None: unknown), that level and its downsample."""

    mpp: float | None
    level: int = 0
    downsample: float = 1.0

    modality: ClassVar[str] = "slide"
    base_unit: ClassVar[str] = "um2"

    @classmethod
    def read(cls, attrs: dict[str, Any]) -> SlideRef:
        mpp = attrs.get("mpp")
        return cls(float(mpp) if mpp else None, int(attrs.get("level") or 0),
                   float(attrs.get("downsample") or 1.0))

    def to_attrs(self) -> dict[str, Any]:
        return {"modality": self.modality, "mpp": self.mpp, "unit": "micrometer",
                "level": self.level, "downsample": self.downsample}

    def row_sizes(self, height: int) -> np.ndarray | None:
        return None if self.mpp is None else np.full(height, self.mpp ** 2)

    def cell_size(self, ndim: int) -> tuple[str | None, list[float]]:
        return ("micrometer", [self.mpp] * ndim) if self.mpp else (None, [1.0] * ndim)

    def world(self, dims: tuple[str, ...], shape: tuple[int, ...], factor: int
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if not self.mpp:
            return super().world(dims, shape, factor)
        size = self.mpp * factor
        return ({d: (np.arange(n) + 0.5) * size for d, n in zip(dims, shape, strict=True)},
                {"units": "µm"})

    def difference(self, other: SpatialRef) -> str | None:
        differs = super().difference(other)
        if differs or not isinstance(other, SlideRef):
            return differs
        if (self.mpp is None) != (other.mpp is None) or (
                self.mpp is not None and other.mpp is not None
                and not np.isclose(self.mpp, other.mpp)):
            return f"mpp {self.mpp} vs {other.mpp}"
        return None


@dataclass(frozen=True)
class VolumeRef(SpatialRef):
    """The voxel-to-RAS affine of the mask's axes (each ascending in RAS+), and the file's own
    affine and flips, which the NIfTI export turns the axes back with."""

    affine: tuple[tuple[float, ...], ...]
    axes: tuple[str, ...]
    source_affine: tuple[tuple[float, ...], ...]
    flipped: tuple[bool, ...] = (False, False, False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    modality: ClassVar[str] = "volume"
    base_unit: ClassVar[str] = "mm3"

    @classmethod
    def read(cls, attrs: dict[str, Any]) -> VolumeRef:
        rows = tuple(tuple(float(v) for v in row) for row in attrs["affine"])
        source = attrs.get("source_affine", attrs["affine"])
        return cls(rows, tuple(attrs.get("axes", ())),
                   tuple(tuple(float(v) for v in row) for row in source),
                   tuple(bool(f) for f in attrs.get("flipped", (False,) * 3)),
                   {k: attrs[k] for k in ("orientation", "source_orientation", "voxel_size_mm")
                    if k in attrs})

    def to_attrs(self) -> dict[str, Any]:
        return {"modality": self.modality, "affine": [list(r) for r in self.affine],
                "axes": list(self.axes), **self.extra,
                "source_affine": [list(r) for r in self.source_affine],
                "flipped": list(self.flipped)}

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=np.float64)

    @staticmethod
    def voxel(affine: Any) -> float:
        """mm³ of one voxel of a voxel-to-mm ``affine``."""
        return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))

    @staticmethod
    def voxel_sizes(affine: Any) -> list[float]:
        """mm along each voxel axis of ``affine``."""
        matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
        return list(np.sqrt((matrix ** 2).sum(axis=0)).tolist())

    def row_sizes(self, height: int) -> np.ndarray | None:
        """The file's voxel volume (its own affine: the flips that present the axes in RAS+
        change no volume)."""
        return np.full(height, self.voxel(self.source_affine))

    def cell_size(self, ndim: int) -> tuple[str | None, list[float]]:
        return "millimeter", self.voxel_sizes(self.source_affine)

    def origin(self, ndim: int) -> list[float]:
        """The translation of the voxel-to-RAS affine, axis by axis (exact for an axis-aligned
        volume; an oblique one's rotation has no NGFF 0.5 form and stays in the attributes)."""
        return [float(self.matrix[w, 3]) for w in world_axes(self.matrix)]

    def world(self, dims: tuple[str, ...], shape: tuple[int, ...], factor: int
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        affine = self.matrix @ np.diag([factor] * 3 + [1])
        coords = {d: affine[w, 3] + np.arange(n) * affine[w, a] for a, (d, n, w) in
                  enumerate(zip(dims, shape, world_axes(affine), strict=True))}
        return coords, {"units": "mm", "affine": affine.tolist(),
                        "orientation": self.extra.get("orientation")}

    def difference(self, other: SpatialRef) -> str | None:
        differs = super().difference(other)
        if differs or not isinstance(other, VolumeRef):
            return differs
        if not np.allclose(self.matrix, other.matrix):
            return f"affine {self.matrix.tolist()} vs {other.matrix.tolist()}"
        return None


@dataclass(frozen=True)
class PixelRef(SpatialRef):
    """No physical reference: cells are counted in pixels (a plug-in's plain arrays)."""

    kind: str = "raster"

    modality: ClassVar[str] = "pixels"
    base_unit: ClassVar[str] = "m2"

    @classmethod
    def read(cls, attrs: dict[str, Any]) -> PixelRef:
        return cls(str(attrs.get("modality") or "raster"))

    def to_attrs(self) -> dict[str, Any]:
        return {"modality": self.kind}

    def row_sizes(self, height: int) -> np.ndarray | None:
        return None

    def cell_size(self, ndim: int) -> tuple[str | None, list[float]]:
        return None, [1.0] * ndim

    def difference(self, other: SpatialRef) -> str | None:
        if not isinstance(other, PixelRef) or other.kind != self.kind:
            return f"reference {self.kind} in pixels vs {other.to_attrs().get('modality')}"
        return None
