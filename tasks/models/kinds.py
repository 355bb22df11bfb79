"""segflow's own model kinds, registered through the ``segflow.models`` entry points in
``pyproject.toml`` exactly as a third-party package registers its own."""

from __future__ import annotations

from segflow.tasks.models import params as p
from segflow.tasks.models.registry import ModelKind

_M = "segflow.tasks.models"
THRESHOLD = ModelKind("threshold", p.ThresholdParams, f"{_M}.threshold:ThresholdModel")
OTSU = ModelKind("otsu", p.OtsuParams, f"{_M}.threshold:OtsuModel")
MULTIOTSU = ModelKind("multiotsu", p.MultiOtsuParams, f"{_M}.threshold:MultiOtsuModel")
ADAPTIVE = ModelKind("adaptive", p.AdaptiveParams, f"{_M}.adaptive:AdaptiveModel")
EDGES = ModelKind("edges", p.EdgesParams, f"{_M}.edges:EdgesModel")
KMEANS = ModelKind("kmeans", p.KMeansParams, f"{_M}.kmeans:KMeansModel")
WATERSHED = ModelKind("watershed", p.WatershedParams, f"{_M}.watershed:WatershedModel")
INDEX = ModelKind("index", p.IndexParams, f"{_M}.spectral_index:SpectralIndexModel")
STAIN = ModelKind("stain", p.StainParams, f"{_M}.stain:StainModel")
TISSUE = ModelKind("tissue", p.TissueParams, f"{_M}.tissue:TissueModel")
UNET = ModelKind("unet", p.UNetParams, f"{_M}.unet:UNetModel")
SEGNET = ModelKind("segnet", p.SegNetParams, f"{_M}.segnet:SegNetModel")
TORCHSCRIPT = ModelKind("torchscript", p.TorchScriptParams, f"{_M}.torchscript:TorchScriptModel")
TORCHVISION = ModelKind("torchvision", p.TorchvisionParams,
                        f"{_M}.torchvision_models:TorchvisionModel")
SMP = ModelKind("smp", p.SMPParams, f"{_M}.smp_models:SMPModel")
MASKRCNN = ModelKind("maskrcnn", p.MaskRCNNParams, f"{_M}.maskrcnn:MaskRCNNModel")
SAM = ModelKind("sam", p.SamParams, f"{_M}.sam:SamModel")
ONNX = ModelKind("onnx", p.OnnxParams, f"{_M}.onnx_model:OnnxModel")
HF = ModelKind("hf", p.HFParams, f"{_M}.hf_model:HFModel")
TORCHGEO = ModelKind("torchgeo", p.TorchGeoParams, f"{_M}.torchgeo_model:TorchGeoModel")
NNUNET = ModelKind("nnunet", p.NnUNetParams, f"{_M}.nnunet_model:NnUNetModel")
MONAI_BUNDLE = ModelKind("monai_bundle", p.MonaiBundleParams,
                         f"{_M}.monai_bundle:MonaiBundleModel")
CELLPOSE = ModelKind("cellpose", p.CellposeParams, f"{_M}.cellpose_model:CellposeModel")
STARDIST = ModelKind("stardist", p.StarDistParams, f"{_M}.stardist_model:StarDistModel")
INSTANSEG = ModelKind("instanseg", p.InstanSegParams, f"{_M}.instanseg_model:InstanSegModel")
