"""Pick the reader for a source: from the config's ``input.modality`` or the file itself."""

from __future__ import annotations

import tifffile

from tasks.config import InputConfig
from tasks.read_raster import open_raster
from tasks.read_slide import SLIDE_SUFFIXES, open_slide
from tasks.read_volume import open_volume, open_zarr_volume
from tasks.source import SourceBase
from tasks.storage import open_input

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".zarr", ".zarr/")


def _tiff_is_slide(uri: str) -> bool:
    """A TIFF without georeferencing that is a slide format or a pyramid is a slide."""
    try:
        with open_input(uri) as fh, tifffile.TiffFile(fh) as tif:  # header only, any URL
            if tif.is_geotiff:
                return False
            return bool(tif.is_svs or tif.is_ome or len(tif.series[0].levels) > 1)
    except Exception:  # not a TIFF tifffile can parse: let the raster reader say why
        return False


def modality_of(uri: str, cfg: InputConfig) -> str:
    if cfg.modality != "auto":
        return cfg.modality
    name = uri.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    if name.endswith((".tif", ".tiff")):
        return "slide" if _tiff_is_slide(uri) else "raster"
    return "slide" if name.endswith(SLIDE_SUFFIXES) else "raster"


def open_source(uri: str, cfg: InputConfig) -> SourceBase:
    """Open ``uri`` lazily with the reader for its modality."""
    modality = modality_of(uri, cfg)
    if modality == "volume":
        if uri.rstrip("/").lower().endswith(".zarr"):
            return open_zarr_volume(uri)
        return open_volume(uri, cfg.bands)
    if modality == "slide":
        return open_slide(uri, cfg.bands, target_mpp=cfg.target_mpp, mpp=cfg.mpp)
    return open_raster(uri, cfg.bands)
