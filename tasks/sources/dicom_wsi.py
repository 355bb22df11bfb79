"""DICOM whole-slide images (VL Whole Slide Microscopy instances, a folder or S3 prefix per
slide) through wsidicom: pyramid levels with their pixel spacing, read window by window.

wsidicom opens a slide's instances itself, locally or through fsspec (S3 with the standard AWS
variables); an open slide does not pickle, so each worker process keeps a few open
(``_opened``) and the reader ships only the URI. A DICOM file in the folder that wsidicom leaves
out (a cut header, another slide) is an error, never a silently smaller pyramid. Brightfield
slides have one optical path; of several (fluorescence), the first is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError, io_error
from segflow.tasks.sources.base import Box, needs, select_bands
from segflow.tasks.sources.dicom_files import SLIDE_CLASSES, first_image, is_dicom_file, members
from segflow.tasks.sources.slide import Slide, pick_level


def is_dicom_slide(uri: str) -> bool:
    """A folder or prefix whose first DICOM image is a VL whole-slide image."""
    first = first_image(uri, ["SOPClassUID"])
    return first is not None and str(first.get("SOPClassUID", "")) in SLIDE_CLASSES


@lru_cache(maxsize=8)
def _opened(uri: str) -> Any:
    return needs("wsidicom", "dicom", uri, "DICOM slides").WsiDicom.open(uri)


@dataclass(frozen=True)
class DicomSlide(Slide):
    """One pyramid level of a DICOM slide; ``numbers``: wsidicom's level number (log2 of the
    downsample) of each level index."""

    numbers: tuple[int, ...] = ()

    reader: ClassVar[str] = "dicom-wsi"

    def _region(self, level: int, box: Box) -> np.ndarray:
        rows, cols = box
        try:
            image = _opened(self.uri).read_region(
                (cols.start, rows.start), self.numbers[level],
                (cols.stop - cols.start, rows.stop - rows.start))
        except Exception as exc:
            _opened.cache_clear()  # a failed read may leave the slide's files half read
            raise io_error(self.uri, f"cannot read level {level}", exc) from exc
        return np.moveaxis(np.asarray(image.convert("RGB")), -1, 0)[[b - 1 for b in self.bands]]

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        pixels = self._region(self.level, box)
        return pixels, np.ones(pixels.shape[1:], bool)

    def read_level(self, level: int) -> np.ndarray:
        size = _opened(self.uri).levels[level].size
        return self._region(level, (slice(0, size.height), slice(0, size.width)))


def open_dicom_slide(uri: str, cfg: InputConfig | None = None) -> DicomSlide:
    """Open the slide's instances, check that every DICOM file is in its pyramid, pick the
    level for ``input.target_mpp``."""
    cfg = cfg or InputConfig()
    try:
        dicom = [n for n in members(uri) if is_dicom_file(uri, n)]
        slide = _opened(uri)
        levels = list(slide.levels)
        used = {str(f).rstrip("/").rsplit("/", 1)[-1] for f in slide.files}
    except UserError:
        raise
    except Exception as exc:
        _opened.cache_clear()
        raise io_error(uri, "not a readable DICOM slide", exc) from exc
    left = sorted(n for n in dicom if n.rsplit("/", 1)[-1] not in used)
    if left:
        raise UserError(uri, f"{len(left)} DICOM file(s) are no part of this slide's pyramid, "
                             f"e.g. {left[0]} (damaged, or another slide's)")
    sizes = [(int(lv.size.height), int(lv.size.width)) for lv in levels]
    downsamples = [sizes[0][1] / s[1] for s in sizes]
    full = cfg.mpp or float(levels[0].mpp.width)
    level = pick_level(downsamples, full, cfg.target_mpp)
    chosen = select_bands(uri, cfg.bands, 3, "slide", default=3)
    coarser = tuple((i, downsamples[i] / downsamples[level]) for i in range(level + 1,
                                                                           len(sizes)))
    source = DicomSlide(uri=uri, spatial_shape=sizes[level], bands=chosen, dtype="uint8",
                        level=level, downsample=downsamples[level],
                        mpp=full * downsamples[level], coarser=coarser,
                        numbers=tuple(int(lv.level) for lv in levels))
    source.read((slice(0, min(16, sizes[level][0])), slice(0, min(16, sizes[level][1]))))
    return source
