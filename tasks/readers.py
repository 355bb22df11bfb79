"""Pick the reader for a source: from the config's ``input.modality`` or the file name."""

from __future__ import annotations

from tasks.config import InputConfig
from tasks.read_raster import open_raster
from tasks.read_volume import open_volume
from tasks.source import SourceBase

VOLUME_SUFFIXES = (".nii", ".nii.gz")


def modality_of(uri: str, cfg: InputConfig) -> str:
    if cfg.modality != "auto":
        return cfg.modality
    return "volume" if uri.lower().endswith(VOLUME_SUFFIXES) else "raster"


def open_source(uri: str, cfg: InputConfig) -> SourceBase:
    """Open ``uri`` lazily with the reader for its modality."""
    if modality_of(uri, cfg) == "volume":
        return open_volume(uri, cfg.bands)
    return open_raster(uri, cfg.bands)
