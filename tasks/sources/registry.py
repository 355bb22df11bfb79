"""Every reader in one table: what it opens (suffixes), what it can do, and how to open it.

A new format is one module with a ``SourceBase`` subclass and an ``open_*`` function, plus one
``Reader`` line here. Nothing else in segflow decides modality from a suffix or a class: the
flow asks ``reader_for`` and then the reader's ``capabilities``. Reader modules are imported on
first use, so listing a bucket never imports GDAL, tifffile or nibabel.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segflow.tasks.config import InputConfig
    from segflow.tasks.sources.base import SourceBase


@dataclass(frozen=True)
class Reader:
    """One format: its name, modality, suffixes and capabilities, and where its code lives."""

    name: str
    modality: str  # raster | slide | volume: the ``input.modality`` value that selects it
    suffixes: tuple[str, ...]  # lower-case; the longest match wins between readers
    opener: str  # "module:function" taking (uri, InputConfig) and returning a SourceBase
    #: units of one cell's size (``cell_measure``): m2 (CRS), um2 (slide µm), mm3 (voxels)
    base_unit: str
    #: a CRS and affine: coordinates in the store, grids compared against a ground truth
    has_georef: bool = False
    #: a cheap low-resolution level to find tissue on, so chunks of glass are never read
    has_tissue_thumbnail: bool = False
    #: "module:function" deciding whether a file whose name another reader also matches
    #: (.tif) is this format; a name only this reader matches (.svs) needs no claim
    claims: str | None = None
    #: the reader for its modality when no suffix says (a forced ``input.modality``)
    fallback: bool = False

    def open(self, uri: str, cfg: InputConfig) -> SourceBase:
        return _load(self.opener)(uri, cfg)

    def claim(self, uri: str) -> bool:
        return self.claims is None or bool(_load(self.claims)(uri))


_MOD = "segflow.tasks.sources"
READERS: tuple[Reader, ...] = (
    Reader("zarr", "volume", (".zarr",), f"{_MOD}.volume:open_zarr_volume", "mm3"),
    Reader("nifti", "volume", (".nii", ".nii.gz"), f"{_MOD}.volume:open_nifti", "mm3",
           fallback=True),
    Reader("slide", "slide", (".svs", ".ndpi", ".scn", ".qptiff", ".ome.tif", ".ome.tiff",
                              ".tif", ".tiff"),
           f"{_MOD}.slide:open_slide", "um2", has_tissue_thumbnail=True,
           claims=f"{_MOD}.slide:is_slide", fallback=True),
    Reader("geotiff", "raster", (".tif", ".tiff"), f"{_MOD}.raster:open_raster", "m2",
           has_georef=True, fallback=True),
)
BY_NAME = {r.name: r for r in READERS}
#: every suffix some reader opens: what a batch lists under a prefix
IMAGE_SUFFIXES: tuple[str, ...] = tuple(dict.fromkeys(s for r in READERS for s in r.suffixes))
#: with ``input.modality: auto``, a file no suffix claims goes to GDAL, which reads most rasters
DEFAULT = "geotiff"


def _load(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _suffix_length(reader: Reader, name: str) -> int:
    return max((len(s) for s in reader.suffixes if name.endswith(s)), default=0)


def reader_for(uri: str, modality: str = "auto") -> Reader:
    """The reader for ``uri``: among those of ``modality`` (all for ``auto``), the ones whose
    suffix matches, longest suffix first, that claim the file; else the modality's fallback."""
    name = uri.rstrip("/").lower()
    candidates = [r for r in READERS if modality in ("auto", r.modality)]
    matching = sorted((r for r in candidates if _suffix_length(r, name)),
                      key=lambda r: -_suffix_length(r, name))
    for reader in matching:
        if len(matching) == 1 or reader.claim(uri):
            return reader
    if modality == "auto":
        return BY_NAME[DEFAULT]
    return next(r for r in candidates if r.fallback)


def modality_of(uri: str, cfg: InputConfig) -> str:
    """``raster``, ``slide`` or ``volume`` as configured, else as the name says, without reading
    the file: a suffix several readers share (.tif) counts as the default reader's. The opened
    reader's ``modality`` is the final word."""
    if cfg.modality != "auto":
        return cfg.modality
    name = uri.rstrip("/").lower()
    matching = [r for r in READERS if _suffix_length(r, name)]
    longest = max((_suffix_length(r, name) for r in matching), default=0)
    best = {r.modality for r in matching if _suffix_length(r, name) == longest}
    return best.pop() if len(best) == 1 else BY_NAME[DEFAULT].modality


def open_source(uri: str, cfg: InputConfig) -> SourceBase:
    """Open ``uri`` lazily (header only) with the reader for it."""
    return reader_for(uri, cfg.modality).open(uri, cfg)


def is_image(uri: str) -> bool:
    """True when some reader opens files named like ``uri``."""
    return uri.rstrip("/").lower().endswith(IMAGE_SUFFIXES)
