"""torchvision's Mask R-CNN (ResNet-50 FPN, v1 or v2) from a local state_dict.

Params: ``arch`` maskrcnn_resnet50_fpn (default) | maskrcnn_resnet50_fpn_v2; ``num_classes``
(background included) when ``model.classes`` is empty, else read from the weights;
``score_threshold`` (0.5) and ``mask_threshold`` (0.5); ``max_detections`` per tile (1000:
torchvision's default of 100 truncates a dense tile, and a tile that returns the cap is
counted and warned about); ``context`` (32 px) of the reach added to ``stats.max_object``.
Weights: ``torch.save(model.state_dict())`` of the model built with ``weights=None,
weights_backbone=None, num_classes=N``; they are loaded with ``weights_only``.

Each tile is padded to one square side and the model's transform is pinned to that side, so
no tile is rescaled. A detector's boxes depend on the whole tile (the RPN and FPN see all of
it), so the tiles' objects match a whole-image pass only where the model is consistent;
ownership still leaves no duplicate and no cut object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec
from segflow.tasks.models.params import MaskRCNNParams
from segflow.tasks.models.torch_instances import TorchInstanceModel
from segflow.tasks.models.torch_model import fill, load_state_dict
from segflow.tasks.models.vision_ops import import_torchvision

_HEAD = "roi_heads.box_predictor.cls_score.weight"  # (num_classes, features)


class MaskRCNNModel(TorchInstanceModel):
    """Mask R-CNN: boxes, classes, scores and a mask per detection."""

    kind = "maskrcnn"
    Params = MaskRCNNParams

    def __init__(self, classes: Any, params: MaskRCNNParams, weights: str, spec: InputSpec,
                 cfg: JobConfig) -> None:
        super().__init__(classes, params, weights, spec, cfg)
        self.arch = params.arch
        self.score_threshold, self.mask_threshold = params.score_threshold, params.mask_threshold
        self.max_detections = params.max_detections

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> MaskRCNNModel:
        path = cls.weights_path(cfg, spec, source)
        params = MaskRCNNParams.model_validate(cfg.model.params)
        state = load_state_dict(path)
        if _HEAD not in state:
            raise UserError(path, f"not a Mask R-CNN state_dict (no {_HEAD})")
        n_classes = int(state[_HEAD].shape[0])
        declared = len(cfg.model.classes) or params.num_classes
        if declared and int(declared) != n_classes:
            raise UserError(path, f"weights hold {n_classes} classes (background included), "
                                  f"the config names {declared}")
        classes = class_table(cfg.model, ["background"] +
                              [f"class_{i}" for i in range(1, n_classes)])
        model = cls(classes, params, path, spec, cfg)
        model.build()  # a wrong checkpoint fails here, in one line, before any pixel is read
        return model

    def build(self) -> nn.Module:
        detection = import_torchvision().models.detection
        extra = max(1000, 2 * self.max_detections)  # proposals kept for dense tiles
        net = getattr(detection, self.arch)(
            weights=None, weights_backbone=None, num_classes=len(self.classes),
            box_detections_per_img=self.max_detections, box_score_thresh=self.score_threshold,
            rpn_pre_nms_top_n_test=extra, rpn_post_nms_top_n_test=extra,
            min_size=self.side, max_size=self.side)  # tiles are padded to it: no rescaling
        what = f"{self.arch} with {len(self.classes)} classes"
        return fill(net, self.weights, load_state_dict(self.weights), what)

    def tile_objects(self, module: nn.Module, tiles: list[np.ndarray], device: torch.device
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
        out = module([torch.from_numpy(t).to(device) for t in tiles])
        results = []
        for found in out:
            masks = (found["masks"][:, 0] > self.mask_threshold).cpu().numpy()
            results.append((masks, found["labels"].cpu().numpy().astype(np.int64),
                            found["scores"].float().cpu().numpy(),
                            len(found["scores"]) >= self.max_detections))
        return results

    def identity(self) -> str:
        return f"maskrcnn({self.arch}, {self.weights_tag()})"
