"""Segmentation methods behind one interface; ``build_model`` turns a config into one.

Kinds come from the ``segflow.models`` entry points (tasks/models/registry.py), whose classes
are imported on first use, so a classical run never imports torch or scikit-learn (seconds and
hundreds of MiB per process, on every Dask worker; BENCHMARKS.md §1).
"""

from __future__ import annotations

from segflow.tasks.config import JobConfig
from segflow.tasks.models.base import InputSpec, SegmentationModel
from segflow.tasks.models.registry import model_kind, model_kinds


def model_class(kind: str) -> type[SegmentationModel]:
    return model_kind(kind).load()


def build_model(cfg: JobConfig, spec: InputSpec, source: str) -> SegmentationModel:
    """Construct and validate the configured model for the input described by ``spec``."""
    if cfg.model.ensemble:
        from segflow.tasks.models.ensemble import EnsembleModel

        return EnsembleModel.from_config(cfg, spec, source)
    return model_class(cfg.model.kind).from_config(cfg, spec, source)


__all__ = ["InputSpec", "SegmentationModel", "build_model", "model_class", "model_kinds"]
