"""InstanSeg from its TorchScript file: the network and its post-processing in one file.

InstanSeg's exported model (what QuPath's extension and ``instanseg-torch`` load) maps a
normalised (1, C, H, W) float image straight to a label image per target (nuclei, cells). It is
loaded with ``torch.jit.load`` alone: no pickle and no InstanSeg install on the worker.
InstanSeg normalises each image by its 0.1/99.9 percentiles before the call; here that range
is fitted once on the whole image (models/cells.py). The file's ``pixel_size`` (µm) becomes the
model's card, so a slide at another resolution is read at the matching pyramid level or
refused (tasks/plan/card.py), where InstanSeg would rescale each tile.
"""

from __future__ import annotations

import numpy as np
import torch

from segflow.tasks.config import JobConfig
from segflow.tasks.errors import UserError, first_line
from segflow.tasks.models.base import InputSpec
from segflow.tasks.models.card import ModelCard
from segflow.tasks.models.cells import CellModel
from segflow.tasks.models.params import InstanSegParams
from segflow.tasks.models.torch_model import cached_module, file_digest, weights_file


def load_instanseg(path: str) -> torch.jit.ScriptModule:
    """The scripted model on CPU, or a one-line error for a file that is not one."""
    try:
        module = torch.jit.load(path, map_location="cpu").eval()
    except Exception as exc:  # torch raises RuntimeError/ValueError/zip errors alike
        raise UserError(path, f"not an InstanSeg TorchScript file: {first_line(exc)}") from exc
    if not hasattr(module, "cells_and_nuclei") or not hasattr(module, "fcn"):
        raise UserError(path, "a TorchScript file but not an InstanSeg model (no fcn, no "
                              "cells_and_nuclei): use model.kind=torchscript")
    return module


class InstanSegModel(CellModel):
    """Nuclei or cells from an InstanSeg TorchScript file."""

    kind = "instanseg"
    Params = InstanSegParams
    #: InstanSeg pads its input to a multiple of 16 for its U-Net: tiles start on that grid
    stride = 16

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> InstanSegModel:
        path = weights_file(cfg, source)
        params = InstanSegParams.model_validate(cfg.model.params)
        module = load_instanseg(path)
        size = float(getattr(module, "pixel_size", 0) or 0)
        card = ModelCard(pixel_size=size, unit="um", on_mismatch="resample") if size > 0 \
            else None
        return cls(params, path, file_digest(path), spec, cfg, source, card)

    def thing_name(self, params: InstanSegParams) -> str:  # type: ignore[override]
        return "nucleus" if params.target == "nuclei" else "cell"

    def label(self, image: np.ndarray) -> np.ndarray:
        device = self.device()
        module = cached_module((self.weights, f"{self.kind}:{self.digest}:{device}"), device,
                               lambda: load_instanseg(self.weights))
        params: InstanSegParams = self.params  # type: ignore[assignment]
        target = torch.tensor([1, 0] if params.target == "nuclei" else [0, 1])
        extra = {} if params.min_size is None else {"min_size": params.min_size}
        with torch.inference_mode():
            out = module(torch.from_numpy(image)[None].to(device),
                         target_segmentation=target, **extra)
        return out[0, 0].cpu().numpy()
