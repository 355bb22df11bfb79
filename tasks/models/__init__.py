"""Segmentation methods behind one interface; ``build_model`` turns a config into one.

The registry names modules, imported on first use, so a classical run never imports torch or
scikit-learn (seconds and hundreds of MiB per process, on every Dask worker; BENCHMARKS.md §1).
"""

from __future__ import annotations

import importlib

from tasks.config import JobConfig
from tasks.errors import SegflowError
from tasks.models.base import InputSpec, SegmentationModel

REGISTRY: dict[str, str] = {
    "threshold": "tasks.models.threshold:ThresholdModel",
    "otsu": "tasks.models.threshold:OtsuModel",
    "multiotsu": "tasks.models.threshold:MultiOtsuModel",
    "adaptive": "tasks.models.adaptive:AdaptiveModel",
    "edges": "tasks.models.edges:EdgesModel",
    "kmeans": "tasks.models.kmeans:KMeansModel",
    "watershed": "tasks.models.watershed:WatershedModel",
    "index": "tasks.models.spectral_index:SpectralIndexModel",
    "stain": "tasks.models.stain:StainModel",
    "unet": "tasks.models.unet:UNetModel",
    "torchscript": "tasks.models.torchscript:TorchScriptModel",
    "torchvision": "tasks.models.torchvision_models:TorchvisionModel",
    "smp": "tasks.models.smp_models:SMPModel",
}


def model_class(kind: str) -> type[SegmentationModel]:
    module, name = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_model(cfg: JobConfig, spec: InputSpec, source: str) -> SegmentationModel:
    """Construct and validate the configured model for the input described by ``spec``."""
    if cfg.model.kind not in REGISTRY:
        raise SegflowError(source, f"unknown model kind {cfg.model.kind!r}")
    return model_class(cfg.model.kind).from_config(cfg, spec, source)


__all__ = ["InputSpec", "SegmentationModel", "build_model", "model_class", "REGISTRY"]
