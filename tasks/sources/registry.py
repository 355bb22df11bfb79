"""Every reader, found through the ``segflow.readers`` entry points (segflow's own included):
what each opens (suffixes) and how to open it.

A reader is a ``SourceBase`` subclass (its capabilities are class attributes) with an ``open``
function, and one ``Reader`` value that an entry point names, so another installed package adds
a format with one line in its ``pyproject.toml``::

    [project.entry-points."segflow.readers"]
    myformat = "my_package.reader:READER"

Nothing else in segflow decides modality from a suffix or a class: the flow asks ``reader_for``
and then the opened source. Reader modules are imported on first use, so listing a bucket never
imports GDAL, tifffile or nibabel.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from segflow.tasks.config import READER_KEYS
from segflow.tasks.errors import UserError

if TYPE_CHECKING:
    from segflow.tasks.config import InputConfig
    from segflow.tasks.sources.base import SourceBase

GROUP = "segflow.readers"


@dataclass(frozen=True)
class Reader:
    """One format as the registry knows it before importing it: what it opens, and where."""

    name: str
    modality: str  # raster | slide | volume: the ``input.modality`` value that selects it
    suffixes: tuple[str, ...]  # lower-case; the longest match wins between readers
    opener: str  # "module:function" taking (uri, InputConfig) and returning a SourceBase
    #: "module:function" deciding whether a file whose name another reader also matches
    #: (.tif) is this format; readers with a claim are asked before those without
    claims: str | None = None
    #: the reader for its modality when no suffix says (a forced ``input.modality``)
    fallback: bool = False
    #: regular expressions for URIs without a suffix that are this format (a STAC API's
    #: ``/collections/<id>/items/<id>``)
    patterns: tuple[str, ...] = ()
    #: a file with one of ``suffixes`` is this format only when ``claims`` says so (.json):
    #: listings and ``reader_for`` ask it even where no other reader shares the suffix
    sniff: bool = False
    #: the format is a folder or prefix of files (a DICOM series): a URI no suffix or pattern
    #: names is this format when ``claims`` says so
    folders: bool = False

    def names(self, uri: str) -> bool:
        """Whether ``uri`` matches one of ``patterns``."""
        return any(re.search(p, uri) for p in self.patterns)

    def may_open(self, uri: str) -> bool:
        """Whether ``uri``'s name (suffix or pattern) is this format's, without reading it."""
        return self.names(uri) or bool(_suffix_length(self, uri.rstrip("/").lower()
                                                      .partition("#")[0]))

    def open(self, uri: str, cfg: InputConfig) -> SourceBase:
        source: SourceBase = _load(self.opener)(uri, cfg)
        return source

    def claim(self, uri: str) -> bool:
        return self.claims is None or bool(_load(self.claims)(uri))


_MOD = "segflow.tasks.sources"
ZARR = Reader("zarr", "volume", (".zarr",), f"{_MOD}.volume:open_zarr_volume")
NIFTI = Reader("nifti", "volume", (".nii", ".nii.gz"), f"{_MOD}.volume:open_nifti", fallback=True)
SLIDE = Reader("slide", "slide", (".svs", ".ndpi", ".scn", ".qptiff", ".ome.tif", ".ome.tiff",
                                  ".tif", ".tiff"),
               f"{_MOD}.slide:open_slide", claims=f"{_MOD}.slide:is_slide", fallback=True)
#: vendor formats OpenSlide reads and tifffile does not (BIF, MIRAX, VMS, Sakura)
OPENSLIDE = Reader("openslide", "slide", (".bif", ".mrxs", ".vms", ".vmu", ".svslide", ".tif",
                                          ".tiff"),
                   f"{_MOD}.vendor_slide:open_vendor_slide",
                   claims=f"{_MOD}.vendor_slide:is_vendor_slide")
GEOTIFF = Reader("geotiff", "raster", (".tif", ".tiff", ".vrt"), f"{_MOD}.raster:open_raster",
                 fallback=True)
#: a STAC Item or ItemCollection (.json, claimed by content), or a STAC API item URL
STAC = Reader("stac", "raster", (".json",), f"{_MOD}.stac:open_stac",
              claims=f"{_MOD}.stac:is_stac", sniff=True,
              patterns=(r"^https?://.*/collections/[^/]+/items/[^/?#]+$",))
#: a DICOM image series (MR, CT): a folder or prefix, or a .zip of one
DICOM = Reader("dicom", "volume", (".zip",), f"{_MOD}.dicom_series:open_dicom_series",
               claims=f"{_MOD}.dicom_series:is_dicom_series", sniff=True, folders=True)
#: multi-channel microscopy (bioio): CZI, ND2, LIF, and OME-TIFF that is not RGB
BIOIO = Reader("bioio", "slide", (".ome.tif", ".ome.tiff", ".czi", ".nd2", ".lif"),
               f"{_MOD}.microscopy:open_microscopy", claims=f"{_MOD}.microscopy:is_multichannel")
#: a DICOM whole-slide image: a folder or prefix of VL WSI instances
DICOM_WSI = Reader("dicom-wsi", "slide", (), f"{_MOD}.dicom_wsi:open_dicom_slide",
                   claims=f"{_MOD}.dicom_wsi:is_dicom_slide", folders=True)
#: with ``input.modality: auto``, a file no suffix claims goes to GDAL, which reads most rasters
DEFAULT = "geotiff"


@cache
def readers() -> dict[str, Reader]:
    """Every installed reader by name, segflow's first; a name registered twice is an error."""
    found: dict[str, Reader] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: (not e.value.startswith(_MOD),
                                                               e.name)):
        reader = ep.load()
        if not isinstance(reader, Reader) or reader.name != ep.name:
            raise UserError(GROUP, f"entry point {ep.name} = {ep.value} is not a Reader "
                                   f"named {ep.name!r}")
        if ep.name in found and found[ep.name] != reader:
            raise UserError(GROUP, f"reader {ep.name!r} is registered twice")
        found[ep.name] = reader
    return found


def image_suffixes() -> tuple[str, ...]:
    """Every suffix some reader opens: what a batch lists under a prefix."""
    return tuple(dict.fromkeys(s for r in readers().values() for s in r.suffixes))


def _load(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return found


def _suffix_length(reader: Reader, name: str) -> int:
    return max((len(s) for s in reader.suffixes if name.endswith(s)), default=0)


def reader_for(uri: str, modality: str = "auto") -> Reader:
    """The reader for ``uri``: among those of ``modality`` (all for ``auto``), the ones whose
    suffix matches, longest suffix first, that claim the file; else the modality's fallback."""
    name = uri.rstrip("/").lower().partition("#")[0]
    candidates = [r for r in readers().values() if modality in ("auto", r.modality)]
    named = [r for r in candidates if r.names(uri)]
    if named:
        return named[0]
    matching = sorted((r for r in candidates if _suffix_length(r, name)),
                      key=lambda r: (-_suffix_length(r, name), r.claims is None))
    for reader in matching:
        if (len(matching) == 1 and not reader.sniff) or reader.claim(uri):
            return reader
    folder = _folder_reader(uri, candidates)
    if folder is not None:
        return folder
    if modality == "auto":
        return readers()[DEFAULT]
    return next(r for r in candidates if r.fallback)


def _folder_reader(uri: str, candidates: list[Reader]) -> Reader | None:
    """The folder format (``Reader.folders``) that claims ``uri``, if any."""
    return next((r for r in candidates if r.folders and r.claim(uri)), None)


def is_folder_image(uri: str) -> bool:
    """True when ``uri`` is a folder or prefix that one image format claims whole (a DICOM
    series). Listings do not ask: a batch takes such images by name (.zip) or one by one."""
    return _folder_reader(uri, list(readers().values())) is not None


def modality_of(uri: str, cfg: InputConfig) -> str:
    """``raster``, ``slide`` or ``volume`` as configured, else as the name says, without reading
    the file: a suffix several readers share (.tif) counts as the default reader's. The opened
    reader's ``modality`` is the final word."""
    if cfg.modality != "auto":
        return cfg.modality
    named = [r for r in readers().values() if r.names(uri)]
    if named:
        return named[0].modality
    name = uri.rstrip("/").lower().partition("#")[0]
    matching = [r for r in readers().values() if _suffix_length(r, name)]
    longest = max((_suffix_length(r, name) for r in matching), default=0)
    best = {r.modality for r in matching if _suffix_length(r, name) == longest}
    if len(best) == 1:
        return best.pop()
    if not matching:  # no suffix: a folder format, as its header says
        try:
            folder = _folder_reader(uri, list(readers().values()))
        except UserError:
            folder = None
        if folder is not None:
            return folder.modality
    return readers()[DEFAULT].modality


def open_source(uri: str, cfg: InputConfig) -> SourceBase:
    """Open ``uri`` lazily (header only) with the reader for it."""
    reader = reader_for(uri, cfg.modality)
    foreign = cfg.reader_keys(reader.name)
    if foreign:
        owners = {"stac": "STAC items", "dicom": "DICOM series", "bioio": "microscopy files"}
        whose = next(owners[name] for name, keys in READER_KEYS.items()
                     if foreign[0].removeprefix("input.") in keys)
        raise UserError(uri, f"{', '.join(foreign)} apply to {whose}; this is read by the "
                             f"{reader.name} reader")
    return reader.open(uri, cfg)


def is_image(uri: str) -> bool:
    """True when some reader opens files named like ``uri`` (or URIs like it)."""
    name = uri.rstrip("/").lower().partition("#")[0]
    if any(r.names(uri) for r in readers().values()):
        return True
    matching = [r for r in readers().values() if _suffix_length(r, name)]
    return any(not r.sniff or r.claim(uri) for r in matching)
