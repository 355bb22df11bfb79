"""Segmentation methods behind one interface; ``build_model`` turns a config into one."""

from __future__ import annotations

from tasks.config import JobConfig
from tasks.errors import SegflowError
from tasks.models.base import SegmentationModel
from tasks.models.kmeans import KMeansModel
from tasks.models.threshold import OtsuModel, ThresholdModel
from tasks.models.torchscript import TorchScriptModel

REGISTRY: dict[str, type[SegmentationModel]] = {
    cls.kind: cls for cls in (ThresholdModel, OtsuModel, KMeansModel, TorchScriptModel)
}


def build_model(cfg: JobConfig, bands: int, dtype: str, source: str) -> SegmentationModel:
    """Construct and validate the configured model for an image of ``bands`` x ``dtype``."""
    try:
        cls = REGISTRY[cfg.model.kind]
    except KeyError:
        raise SegflowError(source, f"unknown model kind {cfg.model.kind!r}") from None
    return cls.from_config(cfg, bands=bands, dtype=dtype, source=source)


__all__ = ["SegmentationModel", "build_model", "REGISTRY"]
