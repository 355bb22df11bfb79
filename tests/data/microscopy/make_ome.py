"""Multi-channel fluorescence test images, from a real multiplexed (Vectra/PerkinElmer) QPTIFF.

``python tests/data/microscopy/make_ome.py small_vectra.qptiff tests/data/vectra_crop.ome.tif``
crops the QPTIFF's three real channels (their names from each page's PerkinElmer XML, the pixel
size from its resolution tags) into a small tiled OME-TIFF with channel names: the committed
sample. ``scenes`` and ``z_stack`` derive, at test time, a two-scene file and a Z-stack from it
(planes shifted and dimmed away from the focus plane) with tifffile.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile


def _meta(names: list[str], um: float, name: str, axes: str = "CYX",
          z_um: float | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"axes": axes, "Name": name, "PhysicalSizeX": um,
                            "PhysicalSizeXUnit": "µm", "PhysicalSizeY": um,
                            "PhysicalSizeYUnit": "µm", "Channel": {"Name": names}}
    if z_um is not None:
        meta.update(PhysicalSizeZ=z_um, PhysicalSizeZUnit="µm")
    return meta


def read(path: Path) -> tuple[np.ndarray, list[str], float]:
    """A CYX OME-TIFF's pixels, channel names and µm per pixel, as tifffile reads them."""
    with tifffile.TiffFile(path) as tif:
        pixels = tif.series[0].asarray()
        ome = ET.fromstring(tif.ome_metadata or "")
    ns = {"o": ome.tag.split("}")[0].strip("{")}
    names = [c.get("Name", "") for c in ome.iterfind(".//o:Channel", ns)]
    um = float(ome.find(".//o:Pixels", ns).get("PhysicalSizeX"))  # type: ignore[union-attr]
    return pixels, names, um


def from_qptiff(source: Path, out: Path) -> Path:
    with tifffile.TiffFile(source) as tif:
        series = tif.series[0]  # CYX, one page per channel
        pixels = series.asarray()
        names = [ET.fromstring(p.description.replace('encoding="utf-16"', "")).findtext("Name")
                 or f"C{i}" for i, p in enumerate(series.pages)]
        numerator, denominator = series.pages[0].tags["XResolution"].value  # per cm
    crop = np.ascontiguousarray(pixels[:, 300:556, 500:884])
    tifffile.imwrite(out, crop, ome=True, tile=(128, 128), compression="zlib",
                     photometric="minisblack",
                     metadata=_meta(names, 1e4 * denominator / numerator, "vectra_crop"))
    return out


def scenes(sample: Path, out: Path) -> Path:
    """Two OME Images in one file: the sample ("tumor_core") and its transpose ("stroma")."""
    pixels, names, um = read(sample)
    with tifffile.TiffWriter(out, ome=True) as tif:
        for name, data in (("tumor_core", pixels),
                           ("stroma", np.ascontiguousarray(pixels.transpose(0, 2, 1)))):
            tif.write(data, tile=(128, 128), compression="zlib", photometric="minisblack",
                      metadata=_meta(names, um, name))
    return out


def z_stack(sample: Path, out: Path, depth: int = 5) -> Path:
    """ZCYX: plane z is the sample shifted by (z - focus) px and dimmed away from the focus."""
    pixels, names, um = read(sample)
    focus = depth // 2
    planes = [np.roll(pixels, (2 * (z - focus), 3 * (z - focus)), axis=(1, 2))
              * (1.0 - 0.2 * abs(z - focus)) for z in range(depth)]
    tifffile.imwrite(out, np.stack(planes).astype(pixels.dtype), ome=True, tile=(128, 128),
                     compression="zlib", photometric="minisblack",
                     metadata=_meta(names, um, "z_stack", axes="ZCYX", z_um=1.5))
    return out


if __name__ == "__main__":
    print(from_qptiff(Path(sys.argv[1]), Path(sys.argv[2])))
