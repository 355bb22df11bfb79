"""What the deep instance models (Mask R-CNN, SAM) share: weights, device, tiles and the merge.

A chunk's read window is cut into tiles that overlap by the model's reach plus
``stats.max_object``; each tile's objects are kept by the tile that owns them
(models/instance.py), so a window holds no duplicate and no object cut at a tile seam, the
same rule that then merges the chunks. Every tile is padded to one square side, so the model
sees every tile at the same scale.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segflow.tasks.config import JobConfig
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec
from segflow.tasks.models.instance import (
    InstanceModel,
    Objects,
    edge_layer,
    merge_tiles,
    partition,
    reaching,
    tile_windows,
)
from segflow.tasks.models.params import MaskRCNNParams, SamParams
from segflow.tasks.models.torch_model import (
    amp_dtype,
    cached_module,
    file_digest,
    pick_device,
    weights_file,
)

DEFAULT_TILE = 512  # px per side of one model call when tiling.tile is auto
DEFAULT_BATCH = 4  # tiles per call when tiling.batch is auto


class TorchInstanceModel(InstanceModel):
    """An instance model backed by a torch module, run tile by tile on the worker's device."""

    accelerated = True

    def __init__(self, classes: Any, params: MaskRCNNParams | SamParams, weights: str,
                 spec: InputSpec, cfg: JobConfig) -> None:
        super().__init__(classes, params)
        self.weights, self.digest = weights, file_digest(weights)
        integer = np.dtype(spec.dtype).kind in "iu"
        self.scale = float(np.iinfo(spec.dtype).max) if integer else 1.0
        self.tile = DEFAULT_TILE if cfg.tiling.tile == "auto" else int(cfg.tiling.tile)
        self.batch = DEFAULT_BATCH if cfg.tiling.batch == "auto" else int(cfg.tiling.batch)
        self.gpu, self.amp = cfg.cluster.gpu, cfg.model.amp
        self.reach = params.context
        self.receptive_field = self.reach + self.max_object

    @staticmethod
    def weights_path(cfg: JobConfig, spec: InputSpec, source: str) -> str:
        """The checkpoint's absolute path, once the input is known to be 1- or 3-band 2-D."""
        if spec.ndim != 2:
            raise UserError(source, f"model.kind={cfg.model.kind} is for 2-D images")
        if spec.bands not in (1, 3):
            raise UserError(source, f"model.kind={cfg.model.kind} takes RGB (or one band); "
                                    f"select 3 bands with input.bands (the image has "
                                    f"{spec.bands})")
        return weights_file(cfg, source)

    @abstractmethod
    def build(self) -> nn.Module:
        """The module on CPU in eval mode with its weights (UserError if they do not fit)."""

    @abstractmethod
    def tile_objects(self, module: nn.Module, tiles: list[np.ndarray],
                     device: torch.device) -> list[tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         bool]]:
        """For a batch of RGB tiles (3, side, side) float32 in 0..1: per tile the masks (n,
        side, side) bool, their classes and scores, and whether the model's cap was hit."""

    @property
    def overlap(self) -> int:
        """Cells tiles overlap by: the model's reach plus the largest object."""
        return self.reach + self.max_object

    @property
    def side(self) -> int:
        """The square side every tile is padded to: a core of at least ``overlap`` plus the
        overlap on both sides (``tiling.tile`` when that leaves such a core)."""
        return max(self.tile - 2 * self.overlap, self.overlap) + 2 * self.overlap

    def module(self) -> tuple[nn.Module, torch.device]:
        """The module on this worker's device, built once per process for these weights and
        every setting ``build`` bakes in (params, tile side)."""
        device = torch.device(pick_device(self.gpu))
        settings = self.params.model_dump_json()
        key = (self.weights, f"{self.kind}:{self.digest}:{device}:{self.side}:{settings}")
        return cached_module(key, str(device), self.build), device

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        return (torch.autocast("cuda", dtype=amp_dtype(device)) if self.amp
                and device.type == "cuda" else contextlib.nullcontext())

    def rgb(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(3, *window) float32 in 0..1, nodata 0; one band is repeated to three."""
        values = pixels.astype(np.float32) / self.scale
        values = np.repeat(values, 3, axis=0) if len(values) == 1 else values
        return np.where(valid, values, 0).astype(np.float32)

    def predict_objects(self, pixels: np.ndarray, valid: np.ndarray,
                        window: tuple[slice, ...], shape: tuple[int, ...]) -> Objects:
        module, device = self.module()
        size = pixels.shape[1:]
        side = self.side
        image = self.rgb(pixels, valid)
        boxes = tile_windows(size, side, self.overlap)
        done: list[tuple[tuple[slice, ...], tuple[slice, ...], Objects]] = []
        capped = 0
        for start in range(0, len(boxes), self.batch):
            group = boxes[start:start + self.batch]
            batch = []
            for read, _ in group:
                padded = np.zeros((3, side, side), np.float32)
                crop = image[(slice(None), *read)]
                padded[:, :crop.shape[1], :crop.shape[2]] = crop
                batch.append(padded)
            with torch.inference_mode(), self.autocast(device):
                found = self.tile_objects(module, batch, device)
            for (read, tile_core), (masks, classes, scores, hit) in zip(group, found):
                height, width = (s.stop - s.start for s in read)
                masks = masks[:, :height, :width] & valid[read]
                labels, kept = partition(masks, scores)
                in_image = tuple(slice(w.start + r.start, w.start + r.stop)
                                 for w, r in zip(window, read))
                cut = reaching(labels, len(kept), edge_layer(in_image, shape))
                done.append((read, tile_core, Objects(labels, classes[kept], scores[kept], cut)))
                capped += hit
        merged = merge_tiles(size, done)
        return Objects(merged.labels, merged.classes, merged.scores, merged.cut, capped=capped)

    def weights_tag(self) -> str:
        """The checkpoint's file name and content digest, for the catalog's model column."""
        return f"{Path(self.weights).name}@{self.digest}"

    def identity(self) -> str:
        return f"{self.kind}({self.weights_tag()})"
