"""The PyTorch ``nms``/``roi_align`` kernels that stand in for torchvision's compiled ops next to a
CPU-only torch: equal to plain NumPy transcriptions of torchvision's CPU kernels, and enough for
Mask R-CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segflow.tasks.models.vision_ops import fallback_ops_active, import_torchvision

try:
    torchvision = import_torchvision()
except ImportError:
    pytest.skip("torchvision is optional (pip install 'segflow[torchvision]')",
                allow_module_level=True)

fallback_only = pytest.mark.skipif(
    not fallback_ops_active(),
    reason="torchvision's compiled ops loaded: the fallback kernels are not in use")


def _nms_reference(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS as torchvision's CPU kernel runs it, in the boxes' float32."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        later = order[rank + 1:]
        width = np.maximum(np.float32(0), np.minimum(x2[i], x2[later])
                           - np.maximum(x1[i], x1[later]))
        height = np.maximum(np.float32(0), np.minimum(y2[i], y2[later])
                            - np.maximum(y1[i], y1[later]))
        inter = width * height
        with np.errstate(invalid="ignore"):  # two empty boxes: 0/0, never suppressed
            iou = inter / (areas[i] + areas[later] - inter)
        suppressed[later[iou > threshold]] = True
    return keep


def _random_boxes(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Crowded boxes with tied scores, exact duplicates and zero-area boxes."""
    corner = rng.uniform(0, 200, (count, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(1, 60, (count, 2))], 1)
    boxes = boxes.astype(np.float32)
    dup = rng.choice(count, count // 10, replace=False)
    boxes[dup] = boxes[rng.choice(count, len(dup))]
    flat = rng.choice(count, count // 10, replace=False)
    boxes[flat, 2] = boxes[flat, 0]  # zero width
    boxes[flat[: len(flat) // 2], 3] = boxes[flat[: len(flat) // 2], 1]  # and zero height
    scores = (rng.integers(0, 50, count) / 50).astype(np.float32)
    return boxes, scores


@fallback_only
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_equals_a_greedy_numpy_loop(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    boxes, scores = _random_boxes(rng, 700)  # more than one of the kernel's blocks
    keep = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
    assert keep.dtype == torch.int64
    assert keep.tolist() == _nms_reference(boxes, scores, threshold)


@fallback_only
def test_nms_of_no_boxes_is_empty() -> None:
    keep = torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.dtype == torch.int64 and keep.shape == (0,)


@fallback_only
@pytest.mark.parametrize("count", [300, 1500])  # torchvision's two batched_nms strategies
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_batched_nms_equals_nms_per_class(count: int, threshold: float) -> None:
    rng = np.random.default_rng(count)
    boxes, scores = _random_boxes(rng, count)
    classes = rng.integers(0, 4, count)
    keep = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                       torch.from_numpy(classes), threshold)
    expected = []
    for label in range(4):
        members = np.flatnonzero(classes == label)
        expected += members[_nms_reference(boxes[members], scores[members], threshold)].tolist()
    assert sorted(keep.tolist()) == sorted(expected)
    assert (np.diff(scores[keep.numpy()]) <= 0).all()


def _bilinear(image: np.ndarray, y: np.float32, x: np.float32) -> np.ndarray:
    """One sample of ``image`` (C, H, W), with torchvision's boundary rules."""
    _, height, width = image.shape
    if y < -1 or y > height or x < -1 or x > width:
        return np.zeros(image.shape[0])
    y, x = max(y, np.float32(0)), max(x, np.float32(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = np.float32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = np.float32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * image[:, y_low, x_low] + hy * lx * image[:, y_low, x_high]
            + ly * hx * image[:, y_high, x_low] + ly * lx * image[:, y_high, x_high])


def _roi_align_reference(features: np.ndarray, rois: np.ndarray, scale: float,
                         pooled: tuple[int, int], sampling_ratio: int,
                         aligned: bool) -> np.ndarray:
    """roi_align as Detectron and torchvision's CPU kernel define it, geometry in float32."""
    pooled_h, pooled_w = pooled
    out = np.zeros((len(rois), features.shape[1], pooled_h, pooled_w))
    for k, (batch, *box) in enumerate(rois):
        x1, y1, x2, y2 = (np.float32(v) * np.float32(scale) - np.float32(0.5 * aligned)
                          for v in box)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, np.float32(1)), max(roi_h, np.float32(1))
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        grid_h = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / pooled_h))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / pooled_w))
        count = max(grid_h * grid_w, 1)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                total = np.zeros(features.shape[1])
                for iy in range(grid_h):
                    y = y1 + ph * bin_h + np.float32(iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + pw * bin_w + np.float32(ix + 0.5) * bin_w / grid_w
                        total += _bilinear(features[int(batch)], y, x)
                out[k, :, ph, pw] = total / count
    return out


@fallback_only
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_align_equals_a_numpy_transcription(aligned: bool, sampling_ratio: int,
                                                scale: float) -> None:
    rng = np.random.default_rng(int(aligned) * 4 + sampling_ratio + int(scale * 4))
    features = rng.normal(size=(2, 3, 11, 14)).astype(np.float32)
    size = np.array([14, 11]) / scale  # the feature map in roi coordinates
    corner = rng.uniform(-0.3, 1.0, (10, 2)) * size
    boxes = np.concatenate([corner, corner + rng.uniform(0.05, 0.6, (10, 2)) * size], 1)
    boxes[0] = [-0.4, -0.3, 1.2, 1.3] * np.tile(size, 2)  # past every side
    boxes[1] = [2, 3, 2, 3]  # a point
    boxes[2] = [1, 2, 1.5, 40]  # thin
    rois = np.concatenate([rng.integers(0, 2, (10, 1)), boxes], 1).astype(np.float32)
    pooled = (5, 4)
    out = torchvision.ops.roi_align(torch.from_numpy(features), torch.from_numpy(rois), pooled,
                                    scale, sampling_ratio, aligned)
    expected = _roi_align_reference(features, rois, scale, pooled, sampling_ratio, aligned)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_mask_rcnn_runs() -> None:
    torch.manual_seed(0)
    # min_size/max_size 128: the image is not resized to torchvision's default 800 px side (a
    # 40x larger forward pass); NMS and RoIAlign run as they do at any size
    net = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128).eval()
    with torch.inference_mode():
        (found,) = net(torch.rand(1, 3, 128, 128))
    assert set(found) == {"boxes", "labels", "scores", "masks"}
    count = len(found["scores"])
    assert count > 0  # detections went through NMS and their masks through RoIAlign
    assert found["boxes"].shape == (count, 4) and found["labels"].shape == (count,)
    assert found["masks"].shape == (count, 1, 128, 128)
