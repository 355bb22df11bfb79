"""A DICOM whole-slide image (a folder of VL WSI instances, one per level) converted offline with
wsidicomizer from a real H&E pyramid, level 0 lossless (JPEG Lossless), with UIDs seeded by the
source's name so a conversion is repeatable; and the tifffile pyramid it is converted from.

wsidicomizer's TiffSlide path places the tiles of coarser levels by ``int(start *
downsample)``: a pyramid whose levels halve exactly (even sizes, as ``tiff_pyramid`` writes)
converts every level exactly; an odd-sized one shifts levels 1.. by a pixel.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import tifffile


def tiff_pyramid(path: Path, levels: list[np.ndarray], mpp: float, tile: int = 256) -> Path:
    """``levels`` (RGB, each half the last) as a tiled tifffile pyramid with its pixel size."""
    with tifffile.TiffWriter(path) as out:
        out.write(levels[0], tile=(tile, tile), subifds=len(levels) - 1, photometric="rgb",
                  compression="zlib", resolution=(1e4 / mpp, 1e4 / mpp),
                  resolutionunit="CENTIMETER")
        for level in levels[1:]:
            out.write(level, tile=(tile, tile), subfiletype=1, photometric="rgb",
                      compression="zlib")
    return path


def to_dicom_wsi(source: Path, folder: Path) -> list[str]:
    """Convert ``source`` (any slide wsidicomizer reads) into ``folder`` (made here)."""
    from pydicom.uid import generate_uid
    from wsidicom.codec import JpegLosslessSettings
    from wsidicom.metadata.uid_generator import CallableUidGenerator
    from wsidicomizer import WsiDicomizer

    counter = itertools.count()
    uids = CallableUidGenerator(lambda: generate_uid(entropy_srcs=[source.name,
                                                                   str(next(counter))]))
    folder.mkdir(parents=True)  # wsidicomizer would write into an existing folder silently
    files: list[str] = WsiDicomizer.convert(
        str(source), output_path=str(folder), tile_size=256, uid_generator=uids,
        encoding=JpegLosslessSettings(predictor=1), workers=1, include_label=False,
        include_overview=False, include_thumbnail=False)
    return files
