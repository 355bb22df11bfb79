"""Segment Anything (Kirillov et al. 2023; the ``segment-anything`` package) from a checkpoint.

Two modes:
- *automatic* (no ``input.prompts``): per tile, the package's ``SamAutomaticMaskGenerator``
  (a point grid, predicted-IoU and stability thresholds, box NMS), then segflow's ownership
  merge across tiles and chunks (models/instance.py).
- *prompted* (``input.prompts``: points or boxes in a vector file): each prompt gives exactly
  one object. Prompts are mapped to the image's pixels once, at fit time (rasters: from the
  file's CRS through the raster's; slides: level-0 pixels to the level read). A prompt is
  answered on a crop of ``stats.max_object`` px each side of its anchor (the point, or the
  box's centre), so the answer does not depend on the chunking; the chunk whose core holds
  the anchor owns the object.

Params: ``arch`` vit_b (default) | vit_l | vit_h, Meta's encoder sizes; ``encoder`` overrides
them ({embed_dim, depth, num_heads, global_attn_indexes, img_size}: the tests build a small
SAM this way); ``points_per_side`` (32), ``points_per_batch`` (64), ``pred_iou_thresh``
(0.88), ``stability_score_thresh`` (0.95), ``box_nms_thresh`` (0.7) for the automatic mode.
Weights: Meta's checkpoint files (``sam_vit_b_01ec64.pth`` ...) are state_dicts, loaded with
``weights_only``; users download them themselves.
"""

from __future__ import annotations

import hashlib
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np
import shapely
import torch
from affine import Affine
from torch import nn

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec
from segflow.tasks.models.instance import Objects, edge_layer, paint, reaching
from segflow.tasks.models.params import SamParams
from segflow.tasks.models.torch_instances import TorchInstanceModel
from segflow.tasks.models.torch_model import fill, load_state_dict
from segflow.tasks.models.vision_ops import import_torchvision
from segflow.tasks.sources.base import SourceBase
from segflow.tasks.sources.georef import through
from segflow.tasks.sources.vectors import read_vectors

#: Meta's encoders: embed_dim, depth, num_heads, global_attn_indexes (segment_anything.build_sam)
ARCHS = {"vit_b": (768, 12, 12, [2, 5, 8, 11]), "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
         "vit_h": (1280, 32, 16, [7, 15, 23, 31])}

def segment_anything() -> ModuleType:
    """The ``segment_anything`` package; it imports torchvision, which needs vision_ops.py's
    help beside a CPU-only torch."""
    import_torchvision()
    try:
        import segment_anything
    except ImportError as exc:
        raise ImportError("model.kind=sam needs segment-anything "
                          "(pip install 'segflow[sam]')") from exc
    return segment_anything


def build_sam(arch: str, encoder: dict[str, Any]) -> nn.Module:
    """A SAM of ``arch`` with ``encoder`` overrides, as ``segment_anything._build_sam`` makes
    it (which fixes the image size at 1024 and takes no overrides)."""
    segment_anything()
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    embed, depth, heads, global_attn = ARCHS[arch]
    embed = int(encoder.get("embed_dim", embed))
    depth = int(encoder.get("depth", depth))
    heads = int(encoder.get("num_heads", heads))
    global_attn = list(encoder.get("global_attn_indexes", global_attn))
    size = int(encoder.get("img_size", 1024))
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=embed, img_size=size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn, window_size=14,
            out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(size // 16,) * 2,
                                     input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256,
            iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def read_prompts(path: str, reader: SourceBase) -> np.ndarray:
    """(n, 5) prompts in the read level's pixels: kind (0 point, 1 box), then row, col of a
    point twice or min row, min col, max row, max col of a box (cell-corner coordinates)."""
    frame = read_vectors(path, "prompts")
    if not len(frame):
        raise UserError(path, "holds no geometry: prompts are points or boxes (polygons)")
    georef = reader.georef
    if georef is not None:
        if frame.crs is not None and georef.crs is not None:
            frame = frame.to_crs(georef.crs)
        frame_to_pixels = ~georef.affine
    else:  # slides: level-0 pixels, read at a coarser level
        frame_to_pixels = Affine.scale(1 / getattr(reader, "downsample", 1.0))
    kinds = set(frame.geometry.geom_type)
    if not kinds <= {"Point", "Polygon"}:
        raise UserError(path, f"prompts are points or boxes (polygons), not {sorted(kinds)}")
    pixels = through(frame_to_pixels, frame.geometry.values)
    bounds = shapely.bounds(pixels)  # min col, min row, max col, max row
    prompts = np.column_stack([frame.geometry.geom_type.values == "Polygon", bounds[:, 1],
                               bounds[:, 0], bounds[:, 3], bounds[:, 2]]).astype(np.float64)
    anchors = anchor_cells(prompts)
    outside = ~np.all((anchors >= 0) & (anchors < np.asarray(reader.spatial_shape)), axis=1)
    if outside.any():
        raise UserError(path, f"{int(outside.sum())} of {len(prompts)} prompts lie outside the "
                              f"image ({' x '.join(map(str, reader.spatial_shape))} px; first: "
                              f"feature {int(np.flatnonzero(outside)[0])})")
    return prompts


def anchor_cells(prompts: np.ndarray) -> np.ndarray:
    """(n, 2) the cell (row, col) each prompt is anchored to: the point's, the box centre's."""
    centre = (prompts[:, 1:3] + prompts[:, 3:5]) / 2
    return np.floor(centre).astype(np.int64)


class SamModel(TorchInstanceModel):
    """SAM, automatic or prompted."""

    kind = "sam"
    Params = SamParams

    def __init__(self, classes: Any, params: SamParams, weights: str, spec: InputSpec,
                 cfg: JobConfig) -> None:
        super().__init__(classes, params, weights, spec, cfg)
        self.arch, self.encoder = params.arch, dict(params.encoder)
        self.automatic = params.automatic()
        self.prompt_file = cfg.input.prompts
        self.prompts: np.ndarray | None = None  # mapped at fit time
        self.prompts_digest = ""

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> SamModel:
        path = cls.weights_path(cfg, spec, source)
        params = SamParams.model_validate(cfg.model.params)
        classes = class_table(cfg.model, ["background", "object"])
        if len(classes) != 2:
            raise UserError(source, "model.kind=sam finds one class of objects: name two "
                                    "classes (background and the objects) or none")
        model = cls(classes, params, path, spec, cfg)
        model.build()  # a wrong checkpoint fails here, in one line, before any pixel is read
        return model

    def build(self) -> nn.Module:
        net = build_sam(self.arch, self.encoder)
        size = net.image_encoder.img_size  # type: ignore[union-attr]
        return fill(net, self.weights, load_state_dict(self.weights),
                    f"SAM {self.arch} (encoder {self.encoder or 'as published'}, {size} px)")

    def fit(self, source: SourceBase, client: Any) -> None:
        if self.prompt_file:
            self.prompts = read_prompts(self.prompt_file, source)
            # in the model's identity, hence the resume key: edited prompts are a new mask
            self.prompts_digest = hashlib.sha256(self.prompts.tobytes()).hexdigest()[:12]

    def predict_objects(self, pixels: np.ndarray, valid: np.ndarray,
                        window: tuple[slice, ...], shape: tuple[int, ...]) -> Objects:
        if self.prompts is None:
            return super().predict_objects(pixels, valid, window, shape)
        return self._prompted(pixels, valid, window, shape)

    def tile_objects(self, module: nn.Module, tiles: list[np.ndarray], device: torch.device
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
        # one per call: its predictor holds the image it was last given
        generator = segment_anything().SamAutomaticMaskGenerator(module, **self.automatic)
        results = []
        for tile in tiles:
            found = generator.generate(np.rint(tile.transpose(1, 2, 0) * 255).astype(np.uint8))
            masks = np.array([f["segmentation"] for f in found], bool).reshape(
                -1, *tile.shape[1:])
            scores = np.array([f["predicted_iou"] for f in found], np.float32)
            results.append((masks, np.ones(len(found), np.int64), scores, False))
        return results

    def _prompted(self, pixels: np.ndarray, valid: np.ndarray, window: tuple[slice, ...],
                  shape: tuple[int, ...]) -> Objects:
        """One object per prompt anchored in the window, each on its own crop."""
        predictor_class = segment_anything().SamPredictor
        assert self.prompts is not None
        module, device = self.module()
        size = pixels.shape[1:]
        origin = np.array([s.start for s in window])
        anchors = anchor_cells(self.prompts) - origin
        inside = np.flatnonzero(np.all((anchors >= 0) & (anchors < np.asarray(size)), axis=1))
        image = np.rint(self.rgb(pixels, valid) * 255).astype(np.uint8).transpose(1, 2, 0)
        boxes, scores, cut, kept = [], [], [], []
        in_image = np.asarray(shape)
        for i in inside:
            lo, hi = anchors[i] - self.max_object, anchors[i] + self.max_object + 1
            if ((lo < 0) & (origin > 0)).any() or ((hi > size) & (origin + size < in_image)).any():
                continue  # its crop leaves the window: a halo prompt, owned by another chunk
            lo, hi = np.maximum(lo, 0), np.minimum(hi, size)  # clipped at the image border
            crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            predictor = predictor_class(module)
            with torch.inference_mode(), self.autocast(device):
                predictor.set_image(np.ascontiguousarray(image[crop]))
                kind, y0, x0, y1, x1 = self.prompts[i]
                shift = origin + lo
                if kind:
                    box = np.array([x0 - shift[1], y0 - shift[0], x1 - shift[1], y1 - shift[0]])
                    masks, iou, _ = predictor.predict(box=box, multimask_output=False)
                else:
                    point = np.array([[x0 - shift[1], y0 - shift[0]]])
                    masks, iou, _ = predictor.predict(point_coords=point,
                                                      point_labels=np.array([1]),
                                                      multimask_output=False)
            mask = masks[0] & valid[crop]
            kept.append(i)
            boxes.append((crop, mask))
            scores.append(float(iou[0]))
            placed = tuple(slice(int(a + o), int(b + o)) for a, b, o in zip(lo, hi, origin))
            cut.append(bool(reaching(mask.astype(np.int32), 1, edge_layer(placed, shape))[0]))
        scores_array = np.asarray(scores, np.float32)
        labels = paint(size, boxes, scores_array, np.asarray(kept, np.int64))
        return Objects(labels, np.ones(len(kept), np.int64), scores_array,
                       np.asarray(cut, bool), anchors=anchors[kept].reshape(-1, 2))

    def identity(self) -> str:
        mode = f"prompted@{self.prompts_digest}" if self.prompt_file else "automatic"
        return f"sam({self.arch}, {mode}, {self.weights_tag()})"
