"""A small Ventana/Roche BIF (a BigTIFF) written from a real H&E crop, readable by OpenSlide,
for the OpenSlide reader's tests: the layout of iScan/DP200 files as OpenSlide's
src/openslide-vendor-ventana.c reads them.

  IFD 0  "Label_Image"         the slide's label photo, with the <iScan> XMP packet (tag 700)
                               OpenSlide detects the format by (ScanRes: µm per pixel)
  IFD 1  "Thumbnail"
  IFD 2  "level=0 mag=20 ..."  tiled level 0 + its <EncodeInfo> XMP (tile joints, no overlap)
  IFD 3.. "level=k mag=20/2^k" tiled levels, each a 2x2 mean of the last

Level tiles are JPEG (YCbCr 4:2:0, as real BIFs) or, with ``compression="deflate"``, lossless,
so that a test can compare OpenSlide's pixels with the source crop exactly.
"""

from __future__ import annotations

import numpy as np
import tifffile

SOFTWARE = "ScanOutputManager 1.1.0.15854"  # what Ventana scanners write


def half(a: np.ndarray) -> np.ndarray:
    """2x2 box mean (dims must be even)."""
    h, w, c = a.shape
    s = a.reshape(h // 2, 2, w // 2, 2, c).astype(np.uint16).sum((1, 3))
    return ((s + 2) // 4).astype(np.uint8)


def thumbnail(a: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image
    im = Image.fromarray(a)
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(im)


def iscan_xmp(mpp: float, mag: float, w: int, h: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<iScan BuildVersion="1.1.0.15854" BuildDate="2/5/2017 6:28:59 AM" UnitNumber="BI10N0000"'
        ' ScannerModel="VENTANA iScan HT" SlideAnnotation="segflow test" Mode="Scan"'
        f' Magnification="{mag:g}" ScanRes="{mpp:g}" FocusMode="AutoFocus" FocusQuality="1"'
        ' ScanWhitePoint="235" ShowLabel="1" LiveView="0" Z-layers="1" Z-spacing="1">'
        f'<AOI0 AOIScanned="1" Left="0" Top="{h}" Right="{w}" Bottom="0"/>'
        '</iScan>'
    ).encode()


def encode_info_xmp(tile: int, across: int, down: int) -> bytes:
    """One scanned AOI at the origin; every RIGHT/UP joint with zero overlap.

    Tiles are numbered 1.. from the bottom row, serpentine (odd rows from the bottom run right
    to left); OpenSlide needs >=1 joint per direction (it averages overlaps by confidence)."""
    def number(col: int, row: int) -> int:  # row counted from the top
        rb = down - 1 - row
        c = across - 1 - col if rb % 2 else col
        return rb * across + c + 1

    joints = []
    for row in range(down):
        for col in range(across):
            if col + 1 < across:
                joints.append(("RIGHT", number(col, row), number(col + 1, row)))
            if row > 0:  # UP: from this tile to the one above it
                joints.append(("UP", number(col, row), number(col, row - 1)))
    joint_xml = "".join(
        f'<TileJointInfo FlagJoined="1" Direction="{d}" Tile1="{t1}" Tile2="{t2}"'
        ' OverlapX="0" OverlapY="0" Confidence="100"/>' for d, t1, t2 in joints)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<EncodeInfo Ver="2">'
        f'<SlideInfo><AoiInfo XIMAGESIZE="{tile}" YIMAGESIZE="{tile}" NumRows="{down}"'
        f' NumCols="{across}" Pos-X="0" Pos-Y="0"/></SlideInfo>'
        '<AoiOrigin><AOI0 OriginX="0" OriginY="0"/></AoiOrigin>'
        f'<SlideStitchInfo><ImageInfo AOIScanned="1" AOIIndex="0" Width="{tile}"'
        f' Height="{tile}" NumRows="{down}" NumCols="{across}" Pos-X="0" Pos-Y="0">{joint_xml}'
        '</ImageInfo></SlideStitchInfo></EncodeInfo>'
    ).encode()


def xmp_tag(xml: bytes) -> tuple[int, int, int, bytes, bool]:
    return (700, 1, len(xml), xml, True)  # XMLPacket, BYTE


def make_bif(src: str, out: str, x: int = 768, y: int = 1280, size: int = 1024,
             tile: int = 256, levels: int = 3, compression: str = "jpeg",
             quality: int = 90) -> np.ndarray:
    """Write OUT; return the level-0 source crop (uint8 RGB)."""
    if size % (tile << (levels - 1)):
        raise ValueError("size must be a multiple of tile * 2**(levels-1)")
    with tifffile.TiffFile(src) as tif:
        page = tif.series[0].levels[0].pages[0]
        base = page.asarray()
        xres = page.tags["XResolution"].value
        unit = page.tags["ResolutionUnit"].value  # 3 = cm
        mpp = round(1e4 / (xres[0] / xres[1]) if unit == 3 else 0.5, 4)
        macro = tif.series[0].levels[-1].asarray()  # whole-slide overview as the "label" photo
    crop = np.ascontiguousarray(base[y:y + size, x:x + size, :3])
    mag = 20.0 if mpp > 0.35 else 40.0

    if compression == "jpeg":
        opts = dict(photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                    subsampling=(2, 2))  # RGB input, stored as YCbCr 4:2:0 JPEG
    elif compression == "deflate":
        opts = dict(photometric="rgb", compression="zlib", compressionargs={"level": 9},
                    predictor=True)  # lossless; OpenSlide reads it via libtiff (slow path)
    else:
        raise ValueError(compression)
    assoc = dict(photometric="rgb", compression="jpeg", compressionargs={"level": 85},
                 rowsperstrip=16, metadata=None)

    software = SOFTWARE
    assoc["software"] = software
    label_xmp = [xmp_tag(iscan_xmp(mpp, mag, size, size))]
    pages = [(macro, dict(description="Label_Image", extratags=label_xmp, **assoc)),
             (thumbnail(crop, 256), dict(description="Thumbnail", **assoc))]
    lvl = crop
    for k in range(levels):
        n = size // tile
        extra = [xmp_tag(encode_info_xmp(tile, n, n))] if k == 0 else []
        pages.append((lvl, dict(tile=(tile, tile), metadata=None, software=software,
                                description=f"level={k} mag={mag / 2 ** k:g} quality={quality}",
                                extratags=extra, resolution=(1e4 / mpp * 2 ** -k,) * 2,
                                resolutionunit="CENTIMETER", **opts)))
        if k + 1 < levels:
            lvl = half(lvl)
    with tifffile.TiffWriter(out, bigtiff=True) as tw:
        for data, kwargs in pages:
            tw.write(data, **kwargs)
    return crop
