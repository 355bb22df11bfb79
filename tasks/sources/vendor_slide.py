"""Vendor slide formats through OpenSlide (openslide-python with openslide-bin, which ships the
library): Ventana/Roche BIF (.bif, or .tif), MIRAX (.mrxs), Hamamatsu VMS/VMU and Sakura
(.svslide).

tifffile stays the reader where it reads a format directly (SVS, NDPI, SCN, Philips, OME,
generic tiled TIFF: ``sources/slide.py``); this reader claims a file when OpenSlide detects one
of the vendor formats above. A .tif is asked only when its TIFF header (range reads) says BIF,
so no GeoTIFF is ever copied or opened here.

Windows are read with ``read_region`` from the chosen level; OpenSlide's alpha channel (0
outside the scanned regions of BIF and MIRAX slides) is the valid mask. Associated images
(label, macro, thumbnail) are never read: a label can carry a patient's name.

OpenSlide opens paths only: an object on S3 (or any fsspec URL) is copied once per worker host
into a local cache keyed by its ETag (or size and mtime), a MIRAX slide with its data folder.
Each worker process keeps a few slides open (``_opened``), never pickled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tifffile

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError, io_error, is_transient
from segflow.tasks.runtime.storage import filesystem, is_local, open_input
from segflow.tasks.sources.base import Box, needs, select_bands
from segflow.tasks.sources.slide import Slide, pick_level

#: OpenSlide's vendors that tifffile does not read as slides (Hamamatsu: its VMS/VMU only)
VENDORS = {"ventana", "mirax", "sakura", "hamamatsu"}


def _openslide(uri: str) -> Any:
    return needs("openslide", "openslide", uri, "vendor slides")


def local_copy(uri: str) -> str:
    """A local path for ``uri``: itself when local, else a cached copy (with a MIRAX
    slide's data folder), fetched once per content version and renamed into place whole."""
    if is_local(uri):
        return uri
    fs, path = filesystem(uri)
    info = fs.info(path)
    version = str(info.get("ETag") or f"{info.get('size')}-{info.get('mtime', '')}")
    root = Path(tempfile.gettempdir()) / "segflow-slides"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / hashlib.sha1(f"{uri}|{version}".encode()).hexdigest()[:16]
    target = folder / path.rsplit("/", 1)[-1]
    if not target.exists():
        partial = Path(tempfile.mkdtemp(prefix=f"{folder.name}-", dir=root))
        fs.get(path, str(partial / target.name))
        if path.lower().endswith(".mrxs"):  # its tiles lie in a folder named like it
            fs.get(path[:-5] + "/", str(partial / target.name[:-5]), recursive=True)
        try:
            partial.rename(folder)
        except OSError:  # another process put it there first
            shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def _tiff_is_bif(uri: str) -> bool:
    with open_input(uri) as fh, tifffile.TiffFile(fh) as tif:
        return bool(tif.is_bif)


def is_vendor_slide(uri: str) -> bool:
    """OpenSlide detects one of ``VENDORS`` (a .tif only when its header says BIF)."""
    name = uri.lower()
    try:
        if name.endswith((".tif", ".tiff")) and not _tiff_is_bif(uri):
            return False
        vendor = _openslide(uri).OpenSlide.detect_format(local_copy(uri))
    except UserError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise io_error(uri, "cannot read the slide", exc) from exc
        return False
    if vendor == "hamamatsu":
        return name.endswith((".vms", ".vmu"))  # NDPI is tifffile's
    return vendor in VENDORS


@lru_cache(maxsize=8)
def _opened(path: str, stamp: float) -> Any:
    """An open slide per worker process (``stamp``: the file's mtime, so a replaced file is
    opened anew)."""
    return _openslide(path).OpenSlide(path)


def _slide(uri: str) -> Any:
    path = local_copy(uri)
    return _opened(path, os.stat(path).st_mtime)


@dataclass(frozen=True)
class VendorSlide(Slide):
    """One level of a slide read by OpenSlide; invalid where OpenSlide's alpha is 0."""

    reader: ClassVar[str] = "openslide"

    def _region(self, level: int, box: Box) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = box
        scale = self.downsample if level == self.level else self._level_downsample(level)
        try:
            slide = _slide(self.uri)
            rgba = np.asarray(slide.read_region(
                (round(cols.start * scale), round(rows.start * scale)), level,
                (cols.stop - cols.start, rows.stop - rows.start)))
        except Exception as exc:  # an OpenSlide error is sticky: open the file anew next time
            _opened.cache_clear()
            raise io_error(self.uri, f"cannot read level {level}", exc) from exc
        pixels = np.moveaxis(rgba[..., :3], -1, 0)[[b - 1 for b in self.bands]]
        return pixels, rgba[..., 3] > 0

    def _level_downsample(self, level: int) -> float:
        return float(_slide(self.uri).level_downsamples[level])

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        return self._region(self.level, box)

    def read_level(self, level: int) -> np.ndarray:
        width, height = _slide(self.uri).level_dimensions[level]
        return self._region(level, (slice(0, height), slice(0, width)))[0]


def open_vendor_slide(uri: str, cfg: InputConfig | None = None) -> VendorSlide:
    """Open a slide's header with OpenSlide and pick the level for ``input.target_mpp``."""
    cfg = cfg or InputConfig()
    try:
        slide = _slide(uri)
        sizes = [(int(h), int(w)) for w, h in slide.level_dimensions]
        downsamples = [float(d) for d in slide.level_downsamples]
        found = slide.properties.get("openslide.mpp-x")
    except UserError:
        raise
    except Exception as exc:
        raise io_error(uri, "not a readable slide", exc) from exc
    full = cfg.mpp or (float(found) if found else None)
    level = pick_level(downsamples, full, cfg.target_mpp)
    chosen = select_bands(uri, cfg.bands, 3, "slide", default=3)
    coarser = tuple((i, downsamples[i] / downsamples[level])
                    for i in range(level + 1, len(sizes)))
    source = VendorSlide(uri=uri, spatial_shape=sizes[level], bands=chosen, dtype="uint8",
                         level=level, downsample=downsamples[level],
                         mpp=full * downsamples[level] if full else None, coarser=coarser)
    source.read((slice(0, min(16, sizes[level][0])), slice(0, min(16, sizes[level][1]))))
    return source
