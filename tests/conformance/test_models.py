"""Every registered semantic model kind passes ``segflow.testing.ModelContract`` on real data
(a Landsat crop with a nodata corner, an RGB GeoTIFF, an H&E slide crop, a real T1 head), at the
array level: built and fitted as a run does, then predicted whole and chunk by chunk straight
from the reader, with no store and no chunk path (the full flow runs once per modality and per
model family in tests/test_segment_flow.py, tests/test_deep_models.py, tests/test_slide.py,
tests/test_volume.py and tests/conformance/test_instance_models.py).

``test_every_registered_kind_has_a_case`` fails when a kind is added without a case here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import rasterio
import tifffile
import torch
import yaml
from rasterio.windows import Window

from segflow.tasks.config import load_config
from segflow.tasks.errors import UserError
from segflow.tasks.models.nets import SegNet, UNet
from segflow.tasks.models.registry import model_kinds
from segflow.testing import ModelContract
from tests import model_forms as forms
from tests.conformance.test_instance_models import INSTANCE_CASES
from tests.conftest import DATA, DilatedNet, export_onnx, write_pyramid_tiff

LANDSAT = Path(__file__).parents[2] / "samples" / "nc_lsat7_2000_b12345.tif"
DEMO_UNET = LANDSAT.parent / "landcover_unet.pt"
MANY = 300  # classes in the many-class cases: ids up to 299 need uint16
DEMO_NORMALIZE = ("{mean: [78.386, 64.2676, 63.5604, 69.1132, 88.4055], "
                  "std: [12.5374, 14.5693, 21.3879, 15.6462, 25.1653]}")


def landsat_crop() -> tuple[np.ndarray, dict]:
    """160 x 200 px of the Landsat scene with a nodata corner, and its profile."""
    window = Window(100, 120, 200, 160)
    with rasterio.open(LANDSAT) as src:
        data = src.read(window=window)
        profile = {**src.profile, "width": 200, "height": 160,
                   "transform": src.window_transform(window)}
    data[:, :40, :50] = profile["nodata"]
    return data, profile


class Landsat(ModelContract):
    def make_image(self, folder: Path) -> Path:
        data, profile = landsat_crop()
        path = folder / "landsat.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path


class Rgb(ModelContract):
    def make_image(self, folder: Path) -> Path:
        return Path(shutil.copy(DATA / "rgb_byte.tif", folder / "rgb.tif"))


class SlideCrop(ModelContract):
    overrides: ClassVar[tuple[str, ...]] = ("tiling.skip_empty=false",)

    def make_image(self, folder: Path) -> Path:
        tissue = tifffile.imread(DATA / "cmu1_pyramid.tif", level=1)[300:556, 200:520]
        return write_pyramid_tiff(folder / "slide.tif", np.ascontiguousarray(tissue),
                                  mpp=0.998, levels=2)


class Head(ModelContract):
    def make_image(self, folder: Path) -> Path:
        return Path(shutil.copy(DATA / "nibabel_anatomical.nii", folder / "head.nii"))




class TestThreshold(Landsat):
    kind = "threshold"
    overrides = ("model.params.value=80",)
    bad = (((), "model.params.value: required by model.kind=threshold"),
           (("model.params.value=1", "model.params.band=9"), "band=9"))


class TestOtsu(Landsat):
    kind = "otsu"
    bad = ((("model.params.band=0",), "band=0"),)


class TestMultiOtsu(Landsat):
    kind = "multiotsu"
    overrides = ("model.params.classes_k=4",)
    bad = ((("model.params.classes_k=1",), "classes_k=1"),
           (("model.params.classes_k=255",), "classes_k=255"))


class TestAdaptive(Landsat):
    kind = "adaptive"
    overrides = ("model.params.block_size=15",)
    bad = ((("model.params.block_size=4",), "odd number"),
           (("model.params.method=median",), "method='median'"))


class TestEdges(Landsat):
    kind = "edges"
    overrides = ("model.params.max_hole=8",)
    bad = ((("model.params.sigma=-1",), "sigma=-1"),)


class TestKMeans(Landsat):
    kind = "kmeans"
    overrides = ("model.params.k=4",)
    bad = ((("model.params.k=1",), "k=1"), (("model.params.k=255",), "k=255"),
           (("model.params.k=3", "model.classes=[a, b]"), "names 2 classes but k=3"))


class TestWatershed(Landsat):
    kind = "watershed"
    overrides = ("model.params.max_extent=10",)
    bad = ((("model.params.low=50",), "go together"),
           (("model.params.low=90", "model.params.high=50"), "must be below"))


class TestIndex(Landsat):
    kind = "index"
    bad = ((("model.params.water_index=ndxi",), "water_index='ndxi'"),
           (("model.params.bands={thermal: 6}",), "model.params.bands.thermal: unknown key"))


class TestStain(SlideCrop):
    kind = "stain"
    bad = ((("model.params.stain=gold",), "stain='gold'"),)


class TestTissue(Head):
    kind = "tissue"
    own_mask = True
    bad = ((("model.classes=[a, b]",), "three classes"),)


class _Torch:
    """Weights the deep cases share."""

    def files(self, folder: Path) -> dict[str, Path]:
        bad = folder / "not_torch.pt"
        bad.write_text("these are not weights\n")
        return {"not_torch": bad, "missing": folder / "missing.pt", "demo_unet": DEMO_UNET}


class TestUNet(_Torch, Landsat):
    """The demo U-Net (trained on this scene; BatchNorm, receptive field 51)."""

    kind = "unet"
    overrides = ("model.weights={demo_unet}", "model.params.num_classes=8",
                 f"model.normalize={DEMO_NORMALIZE}")
    exact = False
    many = ("model.weights={unet_many}", f"model.params.num_classes={MANY}",
            "model.params={depth: 2, base: 4, num_classes: 300}")
    bad = ((("model.weights={demo_unet}", "model.params={depth: 2, base: 16}",
             "model.params.num_classes=8"), "shape mismatches"),
           (("model.weights={not_torch}", "model.params.num_classes=4"),
            "not a torch state_dict"))

    def files(self, folder: Path) -> dict[str, Path]:
        torch.manual_seed(0)
        many = UNet(5, MANY, dims=2, base=4, depth=2)
        with torch.no_grad():  # every cell's top class is 280: ids beyond 254 for sure
            many.head.weight.zero_()
            many.head.bias.copy_(-((torch.arange(MANY) - 280.0) ** 2))
        torch.save(many.state_dict(), folder / "unet_many.pt")
        return {**super().files(folder), "unet_many": folder / "unet_many.pt"}


class TestSegNet(_Torch, Landsat):
    """A seeded SegNet (BatchNorm statistics of this image, head centred: 4 classes occur)."""

    kind = "segnet"
    overrides = ("model.weights={segnet}", "model.params.num_classes=4",
                 f"model.normalize={DEMO_NORMALIZE}")
    exact = False
    many = ("model.weights={segnet_many}", f"model.params.num_classes={MANY}",
            "model.params={depth: 2, base: 4, num_classes: 300}")
    bad = ((("model.weights={segnet}", "model.params={depth: 3, base: 8}",
             "model.params.num_classes=4"), "shape mismatches"),
           (("model.weights={segnet}", "model.params.num_classes=4", "model.params.dims=3"),
            "segnet is 2-D"),
           (("model.weights={not_torch}", "model.params.num_classes=4"),
            "not a torch state_dict"))

    def files(self, folder: Path) -> dict[str, Path]:
        data, profile = landsat_crop()
        return {**super().files(folder),
                "segnet": _segnet(folder, data, profile["nodata"], 4),
                "segnet_many": _segnet(folder, data, profile["nodata"], MANY)}


class TestTorchScript(_Torch, Landsat):
    kind = "torchscript"
    overrides = ("model.weights={dilated}", "model.params.receptive_field=7")
    exact = False
    many = ("model.weights={script_many}",)
    bad = ((("model.weights={not_torch}",), "not a TorchScript model"),
           (("model.weights={missing}",), "weights file not found"))

    def files(self, folder: Path) -> dict[str, Path]:
        torch.jit.script(DilatedNet(bands=5).eval()).save(str(folder / "dilated5.pt"))
        torch.jit.script(_ValueClasses().eval()).save(str(folder / "many.pt"))
        return {**super().files(folder), "dilated": folder / "dilated5.pt",
                "script_many": folder / "many.pt"}


class TestTorchvision(_Torch, Rgb):
    kind = "torchvision"
    overrides = ("model.weights={lraspp}", "model.classes=[a, b, c]",
                 "model.params.arch=lraspp_mobilenet_v3_large")
    exact = False
    global_context = True
    many = ("model.weights={lraspp_many}", f"model.params.num_classes={MANY}",
            "model.params.arch=lraspp_mobilenet_v3_large")
    bad = ((("model.weights={lraspp}", "model.classes=[a, b, c]", "model.params.arch=resnet"),
            "model.params.arch='resnet'"),)

    def files(self, folder: Path) -> dict[str, Path]:
        return {**super().files(folder), "lraspp": _lraspp(folder, 3),
                "lraspp_many": _lraspp(folder, MANY)}


class TestSMP(_Torch, Landsat):
    """smp encoders reach hundreds of pixels: the declared reach covers this small image."""

    kind = "smp"
    chunk = 128
    overrides = ("model.weights={smp}", "model.params.num_classes=4",
                 "model.params.encoder=resnet18", "model.params.receptive_field=128")
    exact = False
    bad = ((("model.weights={smp}", "model.params.num_classes=4",
             "model.params.arch=NoSuchNet"), "smp cannot build"),)

    def files(self, folder: Path) -> dict[str, Path]:
        from segflow.tasks.models.torchvision_models import import_torchvision

        import_torchvision()  # smp imports torchvision, whose PyPI build needs segflow's shim
        smp = pytest.importorskip("segmentation_models_pytorch", reason=(
            "model.kind=smp needs segmentation-models-pytorch (an optional extra, not in "
            "the test install)"))
        torch.save(smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None,
                                    in_channels=5, classes=4).state_dict(), folder / "smp.pt")
        return {**super().files(folder), "smp": folder / "smp.pt"}


class TestOnnx(_Torch, Landsat):
    """The dilated net (receptive field 7) exported to ONNX by torch, run by onnxruntime."""

    kind = "onnx"
    overrides = ("model.weights={dilated}", "model.params.receptive_field=7")
    exact = False
    many = ("model.weights={onnx_many}",)
    bad = ((("model.weights={not_torch}",), "not an ONNX model onnxruntime can run"),
           (("model.weights={dilated}", "model.params.output=probs"), "has no output 'probs'"),
           (("model.weights={missing}",), "weights file not found"))

    def files(self, folder: Path) -> dict[str, Path]:
        torch.manual_seed(0)
        return {**super().files(folder),
                "dilated": export_onnx(DilatedNet(bands=5).eval(), folder / "dilated.onnx", 5),
                "onnx_many": export_onnx(_ValueClasses().eval(), folder / "many.onnx", 5)}


class TestHF(_Torch, Rgb):
    """A tiny SegFormer saved with ``save_pretrained``: attention sees the whole tile."""

    kind = "hf"
    overrides = ("model.weights={segformer}",)
    exact = False
    global_context = True
    many = ("model.weights={segformer_many}",)
    bad = ((("model.weights={pickled}",), "holds no model.safetensors (only "
                                           "pytorch_model.bin: pickles are never loaded)"),
           (("model.weights={missing}",), "not a folder"))

    def files(self, folder: Path) -> dict[str, Path]:
        pickled = folder / "pickled"
        pickled.mkdir()
        (pickled / "config.json").write_text("{}")
        (pickled / "pytorch_model.bin").write_bytes(b"")
        return {**super().files(folder), "pickled": pickled,
                "segformer": forms.segformer(folder / "segformer"),
                "segformer_many": forms.segformer(folder / "many", labels=MANY)}


class EightBands(Landsat):
    """The Landsat crop's 5 bands then its first 3 again: two dates of 4 bands, as TorchGeo's
    Fields of The World weights take them."""

    def make_image(self, folder: Path) -> Path:
        data, profile = landsat_crop()
        path = folder / "eight.tif"
        with rasterio.open(path, "w", **{**profile, "count": 8}) as dst:
            dst.write(np.concatenate([data, data[:3]]))
        return path


class TestTorchGeo(_Torch, EightBands):
    kind = "torchgeo"
    chunk = 128
    member = "Unet_Weights.SENTINEL2_2CLASS_FTW"
    overrides = ("model.weights={ftw}", f"model.params.weights={member}",
                 "model.params.receptive_field=128")
    exact = False
    bad = ((("model.weights={ftw}", "model.params.weights=Unet_Weights.NO_SUCH"),
            "is not a TorchGeo weights enum member"),
           (("model.weights={ftw}", "model.params.weights=ResNet18_Weights.SENTINEL2_ALL_MOCO"),
            "not segmentation weights"),
           (("model.weights={not_torch}", f"model.params.weights={member}"),
            "not a torch state_dict"))

    def files(self, folder: Path) -> dict[str, Path]:
        return {**super().files(folder),
                "ftw": forms.torchgeo_unet(folder / "ftw.pth", self.member)}


class TestNnUNet(_Torch, Head):
    """nnU-Net's PlainConvUNet (InstanceNorm: each output depends on the whole tile)."""

    kind = "nnunet"
    chunk = 16
    overrides = ("model.weights={nnunet}",)
    exact = False
    global_context = True
    bad = ((("model.weights={pickled}",), "holds pickled Python objects beyond tensors and "
                                          "NumPy scalars"),
           (("model.weights={nnunet}", "model.params.configuration=2d"),
            "model.params.configuration='2d' is not in plans.json (3d_fullres)"),
           (("model.weights={nnunet}", "model.params.folds=[3]"), "checkpoint not found"))

    def files(self, folder: Path) -> dict[str, Path]:
        import argparse

        return {**super().files(folder),
                "nnunet": forms.nnunet_folder(folder / "nnunet", spacing=2.0),
                "pickled": forms.nnunet_folder(folder / "pickled",
                                               pickled=argparse.Namespace(code=1))}


class TestMonaiBundle(_Torch, Head):
    """A MONAI bundle's UNet (BatchNorm) with its z-score over the whole volume."""

    kind = "monai_bundle"
    chunk = 16
    overrides = ("model.weights={bundle}", "model.params.receptive_field=16",
                 "model.params.stride=2")
    exact = False
    bad = ((("model.weights={missing}",), "not a folder: model.kind=monai_bundle reads a "
                                          "MONAI bundle folder"),
           (("model.weights={bundle}", "model.params.network=no_such_net"),
            "cannot build no_such_net"))

    def files(self, folder: Path) -> dict[str, Path]:
        return {**super().files(folder), "bundle": forms.monai_bundle(folder / "bundle", 2.0)}


def test_every_registered_kind_has_a_case():
    cases = {c.kind for c in globals().values()
             if isinstance(c, type) and issubclass(c, ModelContract) and c.__name__[:4] == "Test"}
    instance_kinds = {c.kind for c in INSTANCE_CASES} - {"otsu"}  # otsu: the split's base
    own = {name for name, kind in model_kinds().items() if kind.target.startswith("segflow.")}
    assert sorted(cases | instance_kinds) == sorted(own)


@pytest.mark.parametrize("kind", sorted(model_kinds()))
def test_every_kind_refuses_a_key_it_does_not_have(kind):
    with pytest.raises(UserError) as error:
        load_config(overrides=[f"model.kind={kind}", "model.params.no_such_key=1"])
    assert f"model.params.no_such_key: not a parameter of model.kind={kind}" in str(error.value)


# the shared helpers below make weights whose behaviour is known


def _segnet(folder: Path, data: np.ndarray, nodata: float, classes: int) -> Path:
    """A seeded SegNet (default params) with BatchNorm statistics of ``data`` as the demo
    normalisation maps it and its head centred there, so that the random net splits the image;
    with ``MANY`` classes (depth 2, base 4) its head is set so that every cell's top class is
    280."""
    torch.manual_seed(0)
    net = SegNet(5, classes) if classes != MANY else SegNet(5, MANY, base=4, depth=2)
    norm = yaml.safe_load(DEMO_NORMALIZE)
    mean, std = np.array(norm["mean"])[:, None, None], np.array(norm["std"])[:, None, None]
    x = np.where((data != nodata).all(axis=0), (data - mean) / std, 0)
    x = torch.from_numpy(x[None].astype(np.float32))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = this one batch's
    with torch.no_grad():
        net.train()(x)
        if classes == MANY:
            net.head.weight.zero_()
            net.head.bias.copy_(-((torch.arange(MANY) - 280.0) ** 2))
        else:
            net.head.bias -= net.eval()(x).mean((0, 2, 3))
    path = folder / f"segnet{classes}.pt"
    torch.save(net.eval().state_dict(), path)
    return path


class _ValueClasses(torch.nn.Module):
    """A 1x1 convolution to 300 classes whose top class is the cell's band-1 value times 2
    (logit_k = 4 x k - k²): a deterministic map onto ids far beyond 254."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(5, MANY, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 0, 0] = 4.0 * torch.arange(MANY)
            self.conv.bias.copy_(-(torch.arange(MANY, dtype=torch.float32) ** 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _lraspp(folder: Path, classes: int) -> Path:
    """torchvision's LRASPP with seeded random weights; with ``MANY`` classes its head is set
    so that every cell's top class is 280."""
    from segflow.tasks.models.torchvision_models import import_torchvision

    torch.manual_seed(0)
    net = import_torchvision().models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=classes).eval()
    if classes == MANY:
        head = net.classifier
        with torch.no_grad():
            head.low_classifier.weight.zero_()
            head.high_classifier.weight.zero_()
            head.high_classifier.bias.zero_()
            head.low_classifier.bias.copy_(-((torch.arange(MANY) - 280.0) ** 2))
    path = folder / f"lraspp{classes}.pt"
    torch.save(net.state_dict(), path)
    return path


