"""Segmentation methods behind one interface; ``build_model`` turns a config into one."""

from __future__ import annotations

from tasks.config import JobConfig
from tasks.errors import SegflowError
from tasks.models.base import InputSpec, SegmentationModel
from tasks.models.kmeans import KMeansModel
from tasks.models.stain import StainModel
from tasks.models.threshold import OtsuModel, ThresholdModel
from tasks.models.torchscript import TorchScriptModel

REGISTRY: dict[str, type[SegmentationModel]] = {
    cls.kind: cls for cls in (ThresholdModel, OtsuModel, KMeansModel, StainModel,
                             TorchScriptModel)
}


def build_model(cfg: JobConfig, spec: InputSpec, source: str) -> SegmentationModel:
    """Construct and validate the configured model for the input described by ``spec``."""
    try:
        cls = REGISTRY[cfg.model.kind]
    except KeyError:
        raise SegflowError(source, f"unknown model kind {cfg.model.kind!r}") from None
    return cls.from_config(cfg, spec, source)


__all__ = ["InputSpec", "SegmentationModel", "build_model", "REGISTRY"]
