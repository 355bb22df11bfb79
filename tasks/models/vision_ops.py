"""torchvision next to a CPU-only torch, with pure-PyTorch ``nms`` and ``roi_align`` if need be.

PyPI's torchvision wheel is a CUDA build; beside a CPU-only torch its compiled C++ ops cannot
load. Its import then fails (pytorch/vision#9085), and once that is worked around,
``torchvision.ops.nms`` still refuses to run and ``roi_align`` goes through ``torch.compile``
(half a minute on its first call, and a C++ compiler needed). ``import_torchvision`` imports it
anyway and, when the compiled ops are missing, registers PyTorch kernels for the two ops that
Mask R-CNN and Segment Anything's automatic mask generator call: ``torchvision::nms`` and
``torchvision::roi_align``. torchvision's other compiled ops (``roi_pool``, ``ps_roi_align``,
``deform_conv2d``, rotated boxes, quantized ``qnms``/``qroi_align``) stay missing.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

import torch
from torch import Tensor

_IMPORT = threading.Lock()
_LIBRARIES: list[torch.library.Library] = []  # a Library unregisters its ops when collected
_fallback_installed = False  # whether import_torchvision registered the kernels below
_NMS_BLOCK = 256  # boxes whose IoUs with each other one NMS step resolves at once
_SAMPLED_ELEMENTS = 1 << 24  # values one roi_align step samples, at most
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                 "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
}


def _define(*names: str) -> torch.library.Library:
    """A ``torchvision`` library fragment declaring those of ``names`` not declared yet."""
    lib = torch.library.Library("torchvision", "FRAGMENT")
    _LIBRARIES.append(lib)
    for name in names:
        if not hasattr(torch.ops.torchvision, name):
            lib.define(_SCHEMAS[name])
    return lib


def import_torchvision() -> ModuleType:
    """``torchvision``, also from a CUDA torchvision wheel next to a CPU-only torch.

    That pairing cannot load torchvision's C++ ops, and torchvision's import then fails while
    registering a meta kernel for ``nms`` (pytorch/vision#9085). Declaring the two missing op
    schemas lets the import finish; no torchvision release guards this itself. Without the
    compiled ops, ``nms`` and ``roi_align`` then run on the PyTorch kernels of this module.
    """
    with _IMPORT:  # a worker's threads may get here first together
        return _import_torchvision()


def _import_torchvision() -> ModuleType:
    try:
        import torchvision
    except ModuleNotFoundError as exc:
        raise ImportError("model.kind=torchvision needs torchvision "
                          "(pip install 'segflow[torchvision]')") from exc
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        _define("nms", "qnms")
        import torchvision
    if not torchvision.extension._has_ops():
        _install_fallback()
    return torchvision


def fallback_ops_active() -> bool:
    """Whether ``import_torchvision`` put this module's kernels in place of the compiled ops."""
    return _fallback_installed


def _install_fallback() -> None:
    """Register ``nms`` and ``roi_align`` and let torchvision believe its ops loaded."""
    global _fallback_installed
    lib = _define("nms", "roi_align")
    lib.impl("nms", _nms, "CPU")
    # composite: autograd differentiates through it, and it runs on any device
    lib.impl("roi_align", _roi_align, "CompositeImplicitAutograd")
    # ``_assert_has_ops`` reads the module attribute; ``ops.roi_align`` imported its own name
    for module in ("torchvision.extension", "torchvision.ops.roi_align"):
        setattr(importlib.import_module(module), "_has_ops", _has_ops)  # noqa: B010
    _fallback_installed = True


def _has_ops() -> bool:
    return True


def _iou(boxes1: Tensor, areas1: Tensor, boxes2: Tensor, areas2: Tensor) -> Tensor:
    """IoUs of xyxy boxes, as torchvision's CPU kernel computes them (0/0 stays NaN)."""
    (x1, y1, x2, y2), (u1, v1, u2, v2) = boxes1.T[:, :, None], boxes2.T[:, None, :]
    inter = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp_(min=0)
    inter *= (torch.minimum(y2, v2) - torch.maximum(y1, v1)).clamp_(min=0)
    return inter / (areas1[:, None] + areas2 - inter)


def _nms(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices of the kept boxes by decreasing score (stable), int64.

    Blocks of ``_NMS_BLOCK`` boxes in score order: the block's survivors are resolved among
    themselves (a fixed point of "kept unless a kept box before it overlaps it"), then suppress
    the later boxes they overlap.
    """
    torch._check(dets.dim() == 2 and dets.size(1) == 4, lambda: "boxes should be Nx4")
    torch._check(scores.dim() == 1 and scores.size(0) == dets.size(0),
                 lambda: "scores should be N, like the boxes")
    order = scores.sort(stable=True, descending=True).indices
    boxes = dets[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    count = boxes.size(0)
    keep = torch.ones(count, dtype=torch.bool, device=dets.device)
    for start in range(0, count, _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, count)
        block = keep[start:stop].nonzero().flatten() + start
        overlaps = (_iou(boxes[block], areas[block], boxes[block], areas[block])
                    > iou_threshold).triu(1)
        alive = torch.ones(block.size(0), dtype=torch.bool, device=dets.device)
        while True:
            resolved = ~(overlaps & alive[:, None]).any(0)
            if torch.equal(resolved, alive):
                break
            alive = resolved
        keep[block] = alive
        kept, later = block[alive], keep[stop:].nonzero().flatten() + stop
        if kept.numel() and later.numel():
            keep[later] = ~(_iou(boxes[kept], areas[kept], boxes[later], areas[later])
                            > iou_threshold).any(0)
    return order[keep]


def _axis_samples(start: Tensor, bin_size: Tensor, grid: int, pooled: int,
                  length: int) -> Tensor:
    """``roi_align``'s sample positions along one axis, ``[K, pooled, grid]`` for rois ``[K]``.

    As torchvision's kernel, a sample before 0 reads the first pixel, one past ``length - 1``
    the last, and one beyond ``[-1, length]`` nothing: it moves to -2, where ``grid_sample``
    reads zeros. The positions come normalised to ``[-1, 1]`` (``align_corners=False``).
    """
    steps = torch.arange(pooled, dtype=start.dtype, device=start.device)
    offsets = torch.arange(grid, dtype=start.dtype, device=start.device) + 0.5
    coords = (start[:, None, None] + steps[:, None] * bin_size[:, None, None]
              + offsets * (bin_size / grid)[:, None, None])
    inside = (coords >= -1) & (coords <= length)
    coords = torch.where(inside, coords.clamp(0, length - 1), -2)
    return (coords * 2 + 1) / length - 1


def _roi_align(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
               pooled_width: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """``torchvision::roi_align`` (average pooling) after torchvision's CPU kernel.

    The bilinear samples come from ``grid_sample``, for rois grouped by image and sampling grid
    (adaptive when ``sampling_ratio <= 0``) and taken in chunks that bound the memory.
    torchvision's own Python version, ``ops.roi_align._roi_align``, is no substitute: it is
    meant to be compiled, in eager mode adaptive sampling takes memory for every roi times the
    whole feature map, and it reads the border pixels for samples beyond ``[-1, length]``.
    """
    torch._check(rois.dim() == 2 and rois.size(1) == 5, lambda: "rois must have shape [K, 5]")
    channels, height, width = input.shape[1:]
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:] * spatial_scale - offset  # x1, y1, x2, y2
    size = start[:, 2:] - start[:, :2]  # width, height
    if not aligned:
        size = size.clamp(min=1)
    pooled = torch.tensor([pooled_width, pooled_height], dtype=rois.dtype, device=rois.device)
    bin_size = size / pooled
    if sampling_ratio > 0:
        grids = torch.full_like(size, sampling_ratio, dtype=torch.long)
    else:
        grids = torch.ceil(size / pooled).long()
    keys = torch.cat([rois[:, :1].long(), grids], 1)  # image, grid width, grid height
    output = input.new_zeros(rois.size(0), channels, pooled_height, pooled_width)
    for image, grid_w, grid_h in torch.unique(keys, dim=0).tolist():
        if grid_w <= 0 or grid_h <= 0:  # an empty roi (aligned): no samples, zeros
            continue
        samples = pooled_height * grid_h * pooled_width * grid_w
        chunk = max(1, _SAMPLED_ELEMENTS // (samples * (channels + 2)))
        selected = (keys == keys.new_tensor([image, grid_w, grid_h])).all(1).nonzero()
        for index in selected.flatten().split(chunk):
            rows = _axis_samples(start[index, 1], bin_size[index, 1], grid_h, pooled_height,
                                 height).flatten(1)[:, :, None]
            cols = _axis_samples(start[index, 0], bin_size[index, 0], grid_w, pooled_width,
                                 width).flatten(1)[:, None, :]
            points = torch.stack(torch.broadcast_tensors(cols, rows), -1).flatten(0, 1)
            values = torch.nn.functional.grid_sample(
                input[image:image + 1], points[None], mode="bilinear", padding_mode="zeros",
                align_corners=False,
            ).view(channels, index.numel(), pooled_height, grid_h, pooled_width, grid_w)
            output[index] = values.sum((3, 5)).transpose(0, 1) / (grid_h * grid_w)
    return output
