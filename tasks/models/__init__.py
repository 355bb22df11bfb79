"""Segmentation methods behind one interface; ``build_model`` turns a config into one.

The registry names modules, imported on first use, so a classical run never imports torch or
scikit-learn (seconds and hundreds of MiB per process, on every Dask worker; BENCHMARKS.md §1).
"""

from __future__ import annotations

import importlib

from segflow.tasks.config import JobConfig
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec, SegmentationModel

REGISTRY: dict[str, str] = {
    "threshold": "segflow.tasks.models.threshold:ThresholdModel",
    "otsu": "segflow.tasks.models.threshold:OtsuModel",
    "multiotsu": "segflow.tasks.models.threshold:MultiOtsuModel",
    "adaptive": "segflow.tasks.models.adaptive:AdaptiveModel",
    "edges": "segflow.tasks.models.edges:EdgesModel",
    "kmeans": "segflow.tasks.models.kmeans:KMeansModel",
    "watershed": "segflow.tasks.models.watershed:WatershedModel",
    "index": "segflow.tasks.models.spectral_index:SpectralIndexModel",
    "stain": "segflow.tasks.models.stain:StainModel",
    "tissue": "segflow.tasks.models.tissue:TissueModel",
    "unet": "segflow.tasks.models.unet:UNetModel",
    "segnet": "segflow.tasks.models.segnet:SegNetModel",
    "torchscript": "segflow.tasks.models.torchscript:TorchScriptModel",
    "torchvision": "segflow.tasks.models.torchvision_models:TorchvisionModel",
    "smp": "segflow.tasks.models.smp_models:SMPModel",
    "maskrcnn": "segflow.tasks.models.maskrcnn:MaskRCNNModel",
    "sam": "segflow.tasks.models.sam:SamModel",
}


def model_class(kind: str) -> type[SegmentationModel]:
    module, name = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_model(cfg: JobConfig, spec: InputSpec, source: str) -> SegmentationModel:
    """Construct and validate the configured model for the input described by ``spec``."""
    if cfg.model.kind not in REGISTRY:
        raise UserError(source, f"unknown model kind {cfg.model.kind!r}")
    return model_class(cfg.model.kind).from_config(cfg, spec, source)


__all__ = ["InputSpec", "SegmentationModel", "build_model", "model_class", "REGISTRY"]
