"""Each model kind's ``model.params``, typed: one pydantic class per kind, with defaults, units
and a one-line description per field.

This module imports nothing but pydantic, so a config is checked (unknown keys, wrong types,
out-of-range values) in a fraction of a second, before any model module, torch or Dask is
imported. ``docs/reference/model-params.md`` is generated from these classes
(``python -m segflow.tasks.models.params_doc``), never written by hand.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from segflow.tasks.errors import UserError


class ModelParams(BaseModel):
    """The base of every kind's parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_band(band: int, bands: int, source: str) -> int:
    """``band`` (1-based) must name one of the input's ``bands``: known only once it is open."""
    if band > bands:
        raise UserError(source, f"model.params.band={band} but the input has {bands} bands")
    return band


Band = Field(1, ge=1, description="1-based index of the band the method reads")
Sigma = Field(0.0, ge=0, description="px: Gaussian smoothing of the band first (0: none); "
                                     "its reach is the receptive field")


class OtsuParams(ModelParams):
    """Otsu's threshold of one band, fitted on the exact histogram of every valid pixel."""

    band: int = Band
    sigma: float = Sigma


class ThresholdParams(OtsuParams):
    """Foreground where the band is above a fixed value."""

    value: float = Field(description="the threshold, in the band's raw units")


class MultiOtsuParams(ModelParams):
    """``classes_k`` classes of one band split by multi-Otsu thresholds."""

    band: int = Band
    classes_k: int = Field(3, ge=2, le=254, description="number of classes (2..254)")


class AdaptiveParams(ModelParams):
    """A local threshold: each pixel against the mean of its neighbourhood."""

    band: int = Band
    block_size: int = Field(49, ge=3, description="px: odd side of the neighbourhood")
    method: Literal["gaussian", "mean"] = Field("gaussian", description="neighbourhood weights")
    offset: float = Field(0.0, description="subtracted from the local mean, in raw units")

    @field_validator("block_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("use an odd number >= 3")
        return v


class EdgesParams(ModelParams):
    """Regions closed by strong gradients (Gaussian gradient magnitude)."""

    band: int = Band
    sigma: float = Field(1.0, ge=0, description="px: Gaussian scale of the gradient")
    value: float | None = Field(None, description="gradient threshold; null: Otsu's threshold "
                                                  "of the gradient magnitude")
    max_hole: int = Field(27, ge=0, description="px: holes up to this area are filled")


class WatershedParams(ModelParams):
    """Region growing: markers from two thresholds, grown by watershed on the gradient."""

    band: int = Band
    low: float | None = Field(None, description="background below this (raw units); null: "
                                                "multi-Otsu")
    high: float | None = Field(None, description="foreground above this; set with low")
    max_extent: int = Field(24, ge=1, description="px: the farthest a region grows from a marker")
    sigma: float = Field(1.0, ge=0, description="px: Gaussian scale of the gradient")

    @model_validator(mode="after")
    def _together(self) -> Self:
        if (self.low is None) != (self.high is None):
            raise ValueError("low and high go together (or neither)")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"low={self.low:g} must be below high={self.high:g}")
        return self


class IndexBands(ModelParams):
    """1-based band index of each spectral role."""

    green: int = Field(2, ge=1)
    red: int = Field(3, ge=1)
    nir: int = Field(4, ge=1)
    swir1: int = Field(5, ge=1)


class IndexParams(ModelParams):
    """Water, vegetation and bare ground from normalized-difference indices."""

    bands: IndexBands = Field(default_factory=IndexBands,
                              description="band of each role: green, red, nir, swir1")
    water_index: Literal["ndwi", "mndwi"] = Field(
        "ndwi", description="ndwi (green vs nir) or mndwi (green vs swir1)")
    ndwi: float = Field(0.0, description="water where the water index is above this")
    ndvi: float = Field(0.3, description="vegetation where NDVI is above this")
    bare: float = Field(0.1, description="bare where the bare-soil index is above this")

    @field_validator("water_index", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class KMeansParams(ModelParams):
    """k-means clusters of the band vectors, fitted on a bounded sample of the whole image."""

    k: int = Field(4, ge=2, le=254, description="number of clusters (2..254)")
    seed: int = Field(0, description="random state of the fit")
    max_samples: int = Field(200_000, ge=1, description="pixels sampled for the fit")


class StainParams(ModelParams):
    """Glass, tissue and stain-positive tissue of an 8-bit RGB slide (colour deconvolution)."""

    stain: Literal["hematoxylin", "eosin", "dab"] = Field(
        "hematoxylin", description="the stain whose density marks positive tissue")
    tissue: float | None = Field(None, description="saturation above this is tissue; null: Otsu")
    positive: float | None = Field(None, description="stain density above this is positive; "
                                                     "null: Otsu over the tissue")
    max_samples: int = Field(1_000_000, ge=2, description="pixels sampled for the fit")

    @field_validator("stain", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class TissueParams(ModelParams):
    """MRI brain tissue: bias-corrected three-class Gaussian mixture (CSF, GM, WM)."""

    degree: int = Field(3, ge=0, description="degree of the polynomial log bias field")
    iterations: int = Field(4, ge=0, description="bias-field refits (0: no correction)")
    smooth: float = Field(1.0, ge=0, description="voxels: Gaussian smoothing of posteriors")
    fit_voxels: int = Field(2_000_000, ge=1000, description="voxels sampled for the fit")
    seed: int = Field(0, description="random state of the fit")


NumClasses = Field(None, ge=1, description="output classes, when model.classes is empty")
ReceptiveField = Field(0, ge=0, description="px of context each output depends on (the halo "
                                            "that makes tiles exact)")
Stride = Field(1, ge=1, description="px: output stride; tiles are aligned to it")


class UNetParams(ModelParams):
    """segflow's U-Net (2-D or 3-D), its architecture stated here, weights a state_dict."""

    dims: Literal[2, 3] | None = Field(None, description="2 or 3; null: the input's")
    base: int = Field(16, ge=1, description="channels of the first level")
    depth: int = Field(3, ge=1, description="down-sampling levels")
    num_classes: int | None = NumClasses


class SegNetParams(UNetParams):
    """segflow's 2-D SegNet (pooling indices), weights a state_dict."""

    convs: int = Field(2, ge=1, description="convolutions per level")


class TorchScriptParams(ModelParams):
    """Any TorchScript module: its receptive field and stride stated here."""

    receptive_field: int = ReceptiveField
    stride: int = Stride
    num_classes: int | None = NumClasses


class TorchvisionParams(TorchScriptParams):
    """A torchvision segmentation architecture with a state_dict."""

    arch: Literal["deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                  "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large"] = Field(
        description="the torchvision.models.segmentation builder")


class SMPParams(ModelParams):
    """A segmentation_models_pytorch architecture with a state_dict."""

    arch: str = Field("Unet", description="smp architecture class name")
    encoder: str = Field("resnet34", description="smp encoder name")
    num_classes: int | None = NumClasses
    receptive_field: int = ReceptiveField


Context = Field(32, ge=0, description="px of context around each object the model reads, "
                                      "added to stats.max_object")


class MaskRCNNParams(ModelParams):
    """torchvision's Mask R-CNN with a state_dict: one instance per detection."""

    arch: Literal["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"] = Field(
        "maskrcnn_resnet50_fpn", description="the torchvision detection builder")
    score_threshold: float = Field(0.5, ge=0, le=1, description="detections kept above this")
    mask_threshold: float = Field(0.5, ge=0, le=1, description="mask probability cut")
    max_detections: int = Field(1000, ge=1, description="detections per tile")
    num_classes: int | None = Field(None, ge=2, description="classes with background, when "
                                                            "model.classes is empty")
    context: int = Context


class SamParams(ModelParams):
    """Segment Anything: prompted (input.prompts) or its automatic point grid per tile."""

    arch: Literal["vit_b", "vit_l", "vit_h"] = Field("vit_b", description="image encoder")
    encoder: dict[str, Any] = Field(default_factory=dict, description="image-encoder keyword "
                                    "overrides (embed_dim, depth, num_heads, ...)")
    points_per_side: int | None = Field(None, ge=1, description="automatic grid density")
    points_per_batch: int | None = Field(None, ge=1, description="prompts per forward pass")
    pred_iou_thresh: float | None = Field(None, description="predicted-IoU filter")
    stability_score_thresh: float | None = Field(None, description="stability filter")
    box_nms_thresh: float | None = Field(None, ge=0, le=1, description="box NMS IoU")
    context: int = Context

    def automatic(self) -> dict[str, Any]:
        """The automatic mask generator's settings that the config states."""
        return self.model_dump(exclude_none=True, include={
            "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
            "box_nms_thresh"})


class OnnxParams(TorchScriptParams):
    """An ONNX file run by onnxruntime: its receptive field and stride stated here."""

    output: str | None = Field(None, description="the output holding the logits; null: the "
                                                  "first")


class HFParams(ModelParams):
    """A local Hugging Face folder (config.json + model.safetensors): everything the model
    needs is in the folder (classes, normalisation, architecture)."""


class TorchGeoParams(ModelParams):
    """A TorchGeo segmentation model built for one of its weights enums, from a local file."""

    weights: str = Field(description="the weights enum member, e.g. "
                                     "Unet_Weights.SENTINEL2_2CLASS_FTW")
    receptive_field: int = ReceptiveField


class NnUNetParams(ModelParams):
    """An nnU-Net v2 trained folder (plans.json, dataset.json, fold_N/)."""

    configuration: str | None = Field(None, description="2d, 3d_fullres ...; null: the "
                                                        "folder's (it names it in its path)")
    folds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="folds averaged (an ensemble of their softmax)")
    checkpoint: str = Field("checkpoint_final.pth", description="file name in each fold")
    receptive_field: int = ReceptiveField


class MonaiBundleParams(ModelParams):
    """A local MONAI bundle folder (configs/, models/)."""

    config: str = Field("inference.json", description="the file in the bundle's configs "
                                                      "folder that defines the network")
    network: str = Field("network_def", description="the config id of the network")
    weights: str = Field("models/model.pt", description="state_dict file in the bundle")
    receptive_field: int = ReceptiveField
    stride: int = Stride


_PERCENTILES = "low/high percentile of each channel, over the whole image, mapped to 0 and 1"


class CellParams(ModelParams):
    """What the cell and nucleus packages share: which bands they read and how the image is
    normalised (a percentile range fitted once on the whole image, as each package does on
    one image)."""

    channels: list[int] | None = Field(None, min_length=1, description="1-based bands fed to "
                                       "the model, in its channel order; null: the first ones")
    percentiles: tuple[float, float] = Field((1.0, 99.8), description=_PERCENTILES +
                                             " (csbdeep's usual)")
    context: int = Context

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 100:
            raise ValueError("must be two percentiles, low below high, in 0..100")
        return value


class CellposeParams(CellParams):
    """A Cellpose (v4, Cellpose-SAM) model file, run by ``CellposeModel.eval``."""

    percentiles: tuple[float, float] = Field((1.0, 99.0), description=_PERCENTILES +
                                             " (Cellpose's default)")
    diameter: float | None = Field(None, gt=0, description="px: cells are rescaled to the "
                                   "model's 30 px; null: no rescaling")
    flow_threshold: float = Field(0.4, ge=0, description="flow error cut (0: none)")
    cellprob_threshold: float = Field(0.0, description="cell probability cut")
    min_size: int = Field(15, ge=0, description="px: smaller masks are dropped")
    niter: int | None = Field(None, ge=1, description="flow-following steps; null: Cellpose's")
    encoder: dict[str, Any] = Field(default_factory=dict, description="image-encoder keyword "
                                    "overrides for a smaller ViT (embed_dim, depth, num_heads)")


class StarDistParams(CellParams):
    """A StarDist 2-D model folder (config.json, weights_best.h5), run by
    ``predict_instances``."""

    prob_thresh: float | None = Field(None, ge=0, le=1, description="null: the model's own")
    nms_thresh: float | None = Field(None, ge=0, le=1, description="null: the model's own")


class InstanSegParams(CellParams):
    """An InstanSeg TorchScript file (its network and its post-processing in one file)."""

    percentiles: tuple[float, float] = Field((0.1, 99.9), description=_PERCENTILES +
                                             " (InstanSeg's default)")
    target: Literal["nuclei", "cells"] = Field("nuclei", description="which objects of a "
                                               "nuclei-and-cells model; a one-output model "
                                               "gives its own")
    min_size: int | None = Field(None, ge=0, description="px; null: the model's own")
