"""Cellpose (v4, Cellpose-SAM) from a local model file, run by ``CellposeModel.eval``.

Each read window goes through Cellpose's own inference: its 256-px tiles, the network's flows
and cell probability, the flow dynamics and its mask clean-up. Where Cellpose's own
``distributed_segmentation`` stitches block masks by overlap (and cuts or over-merges cells at
block faces), segflow keeps each cell from the one window that owns it (models/cells.py).

The per-image percentile normalisation is given to ``eval`` as a fixed ``lowhigh`` fitted on
the whole image, and ``max_size_fraction`` (masks above a fraction of the *image* are dropped,
which would depend on the window) is off: ``stats.max_object`` bounds objects instead.

Only a file path is accepted: a model name would make Cellpose download weights. Cellpose
loads its checkpoints non-strictly (a wrong file leaves random layers); segflow checks every
key and shape first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from segflow.tasks.config import JobConfig
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec
from segflow.tasks.models.cells import CellModel
from segflow.tasks.models.params import CellposeParams
from segflow.tasks.models.torch_model import (
    cached,
    file_digest,
    load_state_dict,
    weights_file,
)
from segflow.tasks.models.vision_ops import import_torchvision


@contextmanager
def encoder_overrides(encoder: dict[str, Any]) -> Iterator[None]:
    """Cellpose-SAM builds SAM's ViT-L encoder; with ``encoder`` keywords it builds that
    smaller ViT instead (the registry entry is swapped while the net is made, under the
    loading lock)."""
    if not encoder:
        yield
        return
    from cellpose import vit

    from segflow.tasks.models.sam import build_sam

    saved = vit.sam_model_registry["vit_l"]
    vit.sam_model_registry["vit_l"] = lambda checkpoint=None: build_sam("vit_l", encoder)
    try:
        yield
    finally:
        vit.sam_model_registry["vit_l"] = saved


class CellposeModel(CellModel):
    """Cells from a Cellpose 4 model file (Cellpose-SAM or one trained from it)."""

    kind = "cellpose"
    Params = CellposeParams
    #: Cellpose-SAM reads 8 x 8 patches: tiles start on that grid
    stride = 8

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> CellposeModel:
        path = weights_file(cfg, source)
        params = CellposeParams.model_validate(cfg.model.params)
        state = load_state_dict(path)
        if "W2" not in state:
            raise UserError(path, "not a Cellpose 4 model (no W2 readout): Cellpose 3 models "
                                  "do not load in Cellpose 4")
        model = cls(params, path, file_digest(path), spec, cfg, source)
        model.check(state)
        return model

    def build(self, device: str) -> Any:
        """Cellpose's model object on ``device`` with these weights."""
        import_torchvision()
        import torch
        from cellpose import models

        params: CellposeParams = self.params  # type: ignore[assignment]
        half = self.amp and device.startswith("cuda")
        with encoder_overrides(params.encoder):
            return models.CellposeModel(pretrained_model=self.weights,
                                        device=torch.device(device), use_bfloat16=half)

    def check(self, state: dict[str, Any]) -> None:
        """Every tensor of the file fits the network the params describe (one-line error);
        the network is made on torch's meta device: shapes only, no memory, no weights."""
        import_torchvision()
        import torch
        from cellpose.vit import CPSAM

        with encoder_overrides(self.params.encoder), torch.device("meta"):  # type: ignore[attr-defined]
            net = CPSAM(dtype=torch.float32)
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        given = {k.removeprefix("module."): tuple(v.shape) for k, v in state.items()}
        if given != expected:
            wrong = sorted(set(given) ^ set(expected)) or sorted(
                k for k in given if given[k] != expected[k])
            raise UserError(self.weights, f"weights do not fit Cellpose-SAM with "
                                          f"model.params.encoder={self.params.encoder} "  # type: ignore[attr-defined]
                                          f"(first difference: {wrong[0]})")

    def label(self, image: np.ndarray) -> np.ndarray:
        device = self.device()
        model = cached((self.weights, f"{self.kind}:{self.digest}:{device}"), device,
                       lambda: self.build(device))
        params: CellposeParams = self.params  # type: ignore[assignment]
        masks = model.eval(image.copy(), channel_axis=0, normalize={"lowhigh": [0.0, 1.0]},
                           diameter=params.diameter, flow_threshold=params.flow_threshold,
                           cellprob_threshold=params.cellprob_threshold,
                           min_size=params.min_size, niter=params.niter,
                           max_size_fraction=1.0)[0]
        return np.asarray(masks)
