"""What every reader shares: lazy window reads of (bands, *spatial) pixels plus a valid mask.

A reader states what is special about its format (how to open, read a window, read a decimated
sample, and what one cell measures); the mechanics that global fits and Dask need live here once.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from segflow.tasks.errors import UserError, on_worker
from segflow.tasks.sources.georef import Georef
from segflow.tasks.sources.spatial import SpatialRef

if TYPE_CHECKING:  # dask.array costs a second to import: the CLI's checks open headers
    import dask.array as da

Box = tuple[slice, ...]  # spatial window, in cell coordinates of the source


def needs(module: str, extra: str, uri: str, what: str) -> Any:
    """``module`` imported, or a one-line error naming ``uri`` and the extra that installs it
    (a reader's library that the base install leaves out)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(uri, f"{what} need the {extra} extra: pip install "
                             f"'segflow[{extra}]'") from exc


def select_bands(uri: str, bands: Sequence[int] | None, count: int, what: str,
                 default: int | None = None) -> tuple[int, ...]:
    """The 1-based bands to read from a ``what`` (raster, slide, volume) of ``count`` bands: as
    asked, else the first ``default`` (all when None)."""
    chosen = tuple(bands) if bands else tuple(range(1, min(count, default or count) + 1))
    if max(chosen) > count:
        raise UserError(uri, f"band {max(chosen)} requested but the {what} has {count}")
    return chosen


@dataclass(frozen=True)
class SourceBase(ABC):
    """A lazily read multi-band image or volume. Picklable: workers open the file themselves."""

    uri: str
    spatial_shape: tuple[int, ...]
    bands: tuple[int, ...]
    dtype: str
    #: cells whose first band is at or below this value are background (None: no such rule)
    foreground_above: float | None = None

    #: the name of this format's entry in the reader registry (``segflow.readers``)
    reader: ClassVar[str]
    #: raster | slide | volume: how cells are measured and which outputs apply
    modality: ClassVar[str]
    #: units of one cell's size (``cell_measure``): m2 (CRS), um2 (slide µm), mm3 (voxels)
    base_unit: ClassVar[str]
    #: a cheap low-resolution level to find tissue on (``thumbnail``), so chunks of glass
    #: are never read
    supports_tissue_thumbnail: ClassVar[bool] = False
    dims: ClassVar[tuple[str, ...]] = ("y", "x")
    #: names of the columns ``physical`` returns
    physical_axes: ClassVar[tuple[str, ...]] = ("x", "y")

    @property
    def georef(self) -> Georef | None:
        """CRS and affine, for georeferenced formats; else None."""
        return None

    def band_names(self) -> list[str] | None:
        """The chosen bands' names where the format names them (microscopy channels), in
        band order; else None."""
        return None

    def unwritten(self, boxes: list[Box]) -> list[bool]:
        """For each box, whether the file holds no data there at all, known from its header
        (every cell reads as nodata). Default: not known, so False."""
        return [False] * len(boxes)

    def coordinates(self) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        """1-D coordinate arrays (values, attributes) by dim name, for the store."""
        return self.spatial_ref().coordinates(self.spatial_shape)

    @abstractmethod
    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (bands, *box) in the source dtype and the format's own valid mask."""

    @abstractmethod
    def _read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Every ``step``-th cell along each axis: pixels (bands, ...) and valid mask."""

    def cell_measure(self) -> np.ndarray | None:
        """Physical size of one cell at each index along axis 0 (rows or slices), in the
        reader's ``base_unit``, or None when the source has no physical reference."""
        return self.spatial_ref().row_sizes(self.spatial_shape[0])

    def cell_size(self) -> tuple[str | None, list[float]]:
        """Size of one cell along each axis and its UDUNITS-2 unit (None when unknown), for
        the OME-Zarr axes."""
        return self.spatial_ref().cell_size(len(self.spatial_shape))

    @abstractmethod
    def physical(self, index: np.ndarray) -> np.ndarray:
        """Physical coordinates (n, len(physical_axes)) of continuous cell coordinates
        (n, ndim) in ``dims`` order, where cell i spans [i, i + 1) and its centre is i + 0.5."""

    @abstractmethod
    def spatial_ref(self) -> SpatialRef:
        """Where the grid lies (CRS + affine, µm per pixel, or the voxel affine): the store
        keeps it, and everything that reads a mask back takes it from there."""

    def _valid(self, pixels: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The format's valid mask narrowed by segflow's rules. Non-finite values (NaN, ±inf)
        are invalid cells, like nodata, and read as 0, so no filter or network spreads them
        into the valid cells around them."""
        if pixels.dtype.kind == "f":
            valid = valid & np.isfinite(pixels).all(axis=0)
            pixels = np.nan_to_num(pixels, copy=not pixels.flags.writeable, nan=0.0,
                                   posinf=0.0, neginf=0.0)
        if self.foreground_above is not None:
            valid = valid & (pixels[0] > self.foreground_above)
        return pixels, valid

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (bands, *box) in the source dtype and the valid mask (*box) of one window."""
        return self._valid(*self._read(box))

    def read_overview(self, max_cells: int) -> np.ndarray:
        """A decimated sample of valid cells, (n, bands), for fits that need one.

        It depends only on the source, never on the chunk size; memory is bounded by max_cells.
        """
        total = int(np.prod(self.spatial_shape))
        step = max(1, int(np.ceil((total / max_cells) ** (1 / len(self.spatial_shape)))))
        pixels, valid = self.read_decimated(step)
        return pixels[:, valid].T

    def thumbnail(self, step: int) -> tuple[np.ndarray, float]:
        """About every ``step``-th cell, (bands, ...), and its exact decimation factor; readers
        with a pyramid (``supports_tissue_thumbnail``) take it from a coarse level."""
        pixels, _ = self._read_decimated(step)
        return pixels, float(step)

    def read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Every ``step``-th cell along each axis (a thumbnail): pixels and valid mask."""
        return self._valid(*self._read_decimated(step))

    # dask.array.from_array protocol: the source as a (bands, *spatial) float64 array, NaN
    # where invalid, read window by window.
    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.bands), *self.spatial_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.spatial_shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        pixels, valid = on_worker(self.read, tuple(key[1:]))
        out = pixels.astype(np.float64)
        out[:, ~valid] = np.nan
        return out[key[0]]

    def to_dask(self, chunk: int = 1024) -> da.Array:
        """The whole source as a lazy float64 dask array (bands, *spatial), NaN where invalid."""
        import dask.array as da

        chunks = (len(self.bands), *(chunk,) * len(self.spatial_shape))
        return da.from_array(self, chunks=chunks, asarray=False, lock=False, fancy=False,
                             meta=np.empty((0,) * self.ndim, np.float64),
                             name=f"source-{self.uri}-{self.bands}-{self.foreground_above}-{chunk}")
