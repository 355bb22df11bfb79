"""Deep models behind the one interface: the U-Net (2-D demo checkpoint, 3-D volumes), SegNet,
torchvision and smp networks, exact tiling where the receptive field allows, and safe weight
loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.errors import SegflowError
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.models.nets import (
    SegNet,
    UNet,
    segnet_receptive_field,
    unet_receptive_field,
)

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "samples" / "nc_lsat7_2000_b12345.tif"
LABELS = ROOT / "samples" / "nc_landclass96.tif"
DATA = Path(__file__).parent / "data"


def _mask(result: dict) -> np.ndarray:
    return zarr.open_array(result["output_uri"], path="0", mode="r")[:]


def _agree_but_near_ties(tiled: np.ndarray, logits: np.ndarray, where: np.ndarray) -> int:
    """Cells where ``tiled`` differs from the argmax of whole-input ``logits``; fails on any
    difference that is not a near-tie. Convolutions pick different float32 kernels for different
    input sizes, so logits agree to ~1e-5, not bit for bit (as tests/test_volume.py allows)."""
    top2 = np.sort(logits, axis=0)[-2:]
    near_tie = (top2[1] - top2[0]) < 1e-3
    differ = (tiled != logits.argmax(0)) & where
    assert not (differ & ~near_tie).any()
    return int(differ.sum())


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_receptive_field_is_what_autograd_sees(depth):
    """The stated radius is exact: some output cell depends on an input cell that far away,
    none on one further (checked over every pooling phase)."""
    torch.manual_seed(0)
    rf = unet_receptive_field(depth)
    net = UNet(1, 1, dims=2, base=8, depth=depth).double().eval()
    reach = 0
    for p in range(2 * rf, 2 * rf + 2**depth):
        x = torch.randn(1, 1, 2**depth * 2, 4 * rf + 64, dtype=torch.float64,
                        requires_grad=True)
        net(x)[0, :, :, p].sum().backward()
        cols = (x.grad[0, 0].abs().sum(0) > 0).nonzero().flatten()
        reach = max(reach, p - int(cols.min()), int(cols.max()) - p)
    assert reach == rf


def test_landcover_unet_through_the_flow_is_seamless_and_matches_its_report(tmp_path,
                                                                           dask_address):
    """The bundled checkpoint on the real scene, in 4x4 chunks of 128 (tiles of 64): the mask
    equals one whole-image forward pass, has several classes, and scores on the eastern
    hold-out what samples/landcover_unet.json reports."""
    report = json.loads((ROOT / "samples" / "landcover_unet.json").read_text())
    cfg = load_config(ROOT / "configs" / "landcover_unet.yaml",
                      ["tiling.chunk=128", "tiling.tile=64", "tiling.batch=4"])
    result = segment_image(str(SAMPLE), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    assert result["chunks_total"] == 16
    mask = _mask(result)

    with rasterio.open(SAMPLE) as src:
        pixels = src.read()
    valid = (pixels != -99999).all(axis=0)
    norm = cfg.model.normalize
    x = (pixels - np.array(norm.mean)[:, None, None]) / np.array(norm.std)[:, None, None]
    x[:, ~valid] = 0
    net = UNet(5, 8, dims=2, base=16, depth=3)
    net.load_state_dict(torch.load(cfg.model.weights, weights_only=True))
    with torch.inference_mode():
        logits = net.eval()(torch.from_numpy(x[None].astype(np.float32)))[0].numpy()
    assert (mask[~valid] == 255).all()
    assert _agree_but_near_ties(mask, logits, valid) <= 20

    present = np.unique(mask[valid])
    assert len(present) >= 3 and present.max() <= 7
    with rasterio.open(LABELS) as src:
        truth = src.read(1)
    lo, hi = report["split"]["holdout_columns"]
    pred, gt = mask[:, lo:hi], truth[:, lo:hi]
    scored = (gt >= 1) & valid[:, lo:hi]
    ious = []
    for name in report["holdout"]["per_class"]:
        c = report["architecture"]["classes"].index(name)
        p, t = (pred == c) & scored, (gt == c) & scored
        ious.append((p & t).sum() / (p | t).sum())
    # scored over labelled cells with pixels: the report's figures, from a tiled run
    assert np.mean(ious) == pytest.approx(report["holdout"]["mean_iou"], abs=0.01)
    assert np.mean(ious) > 0.2  # modest: see the README



@pytest.mark.parametrize("depth, convs", [(1, 2), (2, 2), (3, 2), (2, 1), (3, 3)])
def test_segnet_receptive_field_is_tight_and_safe(depth, convs):
    """Over every pooling phase: replacing every input cell beyond the stated radius leaves the
    output cell bit for bit (this covers the unpooling's argmax, which has no gradient), and
    replacing the two cells at the radius with large values changes it for some phase: the
    radius is exact.

    Autograd sees exactly 2**(depth-1) cells less and nothing beyond: at the deepest level the
    unpool puts each max back where it came from, so that window's other cells act only through
    the argmax (a choice, not a value with a gradient)."""
    torch.manual_seed(0)
    rf = segnet_receptive_field(depth, convs)
    net = SegNet(1, 1, base=8, depth=depth, convs=convs).double().eval()
    reach, touched = 0, False
    for p in range(2 * rf, 2 * rf + 2**depth):
        x = torch.randn(1, 1, 2**depth * 4, 4 * rf + 64, dtype=torch.float64,
                        requires_grad=True)
        out = net(x)
        out[0, :, :, p].sum().backward()
        cols = (x.grad[0, 0].abs().sum(0) > 0).nonzero().flatten()
        reach = max(reach, p - int(cols.min()), int(cols.max()) - p)
        with torch.no_grad():
            far, edge = x.detach().clone(), x.detach().clone()
            far[..., :p - rf] = torch.randn_like(far[..., :p - rf])
            far[..., p + rf + 1:] = torch.randn_like(far[..., p + rf + 1:])
            # large values: some channel's max in the deepest window moves to that cell
            edge[..., [p - rf, p + rf]] = 10 * torch.randn_like(edge[..., [p - rf, p + rf]])
            assert torch.equal(net(far)[..., p], out.detach()[..., p])
            touched |= not torch.equal(net(edge)[..., p], out.detach()[..., p])
    assert touched
    assert reach == rf - 2**(depth - 1)


@pytest.fixture
def unet3d_weights(tmp_path: Path) -> Path:
    """A randomly initialised 3-D U-Net (depth 1: receptive field 9, stride 2) as a state_dict."""
    torch.manual_seed(3)  # a seed whose random net splits the head into two classes
    path = tmp_path / "unet3d.pt"
    torch.save(UNet(1, 3, dims=3, base=4, depth=1).state_dict(), path)
    return path


def test_unet_3d_through_the_flow_equals_a_whole_volume_pass(unet3d_weights, tmp_path,
                                                              dask_address):
    """The real T1 volume (33x41x25) in 18 chunks of 16 with a halo of 10 >= 9."""
    volume = DATA / "nibabel_anatomical.nii"
    # the flow reads the LAS file with x reversed (RAS+), as nibabel's closest canonical
    voxels = np.asarray(nib.as_closest_canonical(nib.load(volume)).dataobj).astype(np.float32)
    mean, std = float(voxels.mean()), float(voxels.std())
    cfg = load_config(overrides=[
        "model.kind=unet", f"model.weights={unet3d_weights}", "model.classes=[a, b, c]",
        "model.params={depth: 1, base: 4}", f"model.normalize={{mean: [{mean}], std: [{std}]}}",
        "tiling.chunk=16", "tiling.tile=16", "tiling.halo=9", "tiling.skip_empty=false"])
    result = segment_image(str(volume), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    assert result["chunks_total"] == 3 * 3 * 2
    mask = _mask(result)
    assert mask.shape == voxels.shape and mask.max() <= 2

    net = UNet(1, 3, dims=3, base=4, depth=1)
    net.load_state_dict(torch.load(unet3d_weights, weights_only=True))
    with torch.inference_mode():
        logits = net.eval()(torch.from_numpy((voxels - mean) / std)[None, None])[0].numpy()
    assert len(np.unique(logits.argmax(0))) > 1
    assert _agree_but_near_ties(mask, logits, np.ones(mask.shape, bool)) <= 10


def test_torchvision_lraspp_with_one_tile_equals_a_direct_call(rgb_tif, tmp_path,
                                                                dask_address):
    from segflow.tasks.models.torchvision_models import import_torchvision

    with rasterio.open(rgb_tif) as src:
        x = src.read().astype(np.float32) / 255
        valid = src.dataset_mask() > 0
    x[:, ~valid] = 0
    torch.manual_seed(0)
    net = import_torchvision().models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3).eval()
    head = net.classifier
    with torch.no_grad():  # a fresh head is nearly constant: amplify its signal, centre classes
        head.low_classifier.weight *= 1e3
        head.high_classifier.weight *= 1e3
        head.low_classifier.bias -= net(torch.from_numpy(x[None]))["out"].mean((0, 2, 3))
        logits = net(torch.from_numpy(x[None]))["out"][0].numpy()
    assert len(np.unique(logits.argmax(0)[valid])) == 3
    weights = tmp_path / "lraspp.pt"
    torch.save(net.state_dict(), weights)
    cfg = load_config(overrides=[
        "model.kind=torchvision", f"model.weights={weights}", "model.classes=[a, b, c]",
        "model.params.arch=lraspp_mobilenet_v3_large", "tiling.chunk=1024",
        "tiling.tile=1024", "tiling.halo=0", "tiling.stitch=gaussian"])
    result = segment_image(str(rgb_tif), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    # the worker runs torch with other thread counts: exact up to float near-ties
    assert _agree_but_near_ties(_mask(result), logits, valid) <= 50


def test_smp_unet_predict_equals_a_direct_call(tmp_path):
    from segflow.tasks.models.torchvision_models import import_torchvision

    import_torchvision()  # smp imports torchvision: the same CPU-torch workaround
    smp = pytest.importorskip(
        "segmentation_models_pytorch",
        reason="segmentation-models-pytorch is optional (pip install 'segflow[smp]')")
    torch.manual_seed(0)
    net = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None,
                           in_channels=5, classes=4).eval()
    weights = tmp_path / "smp.pt"
    torch.save(net.state_dict(), weights)
    cfg = load_config(overrides=[
        "model.kind=smp", f"model.weights={weights}", "model.params.num_classes=4",
        "model.params.encoder=resnet18", "tiling.tile=128", "tiling.halo=0"])
    model = build_model(cfg, InputSpec(bands=5, dtype="float32"), "test")
    rng = np.random.default_rng(0)
    pixels = rng.random((5, 100, 90), dtype=np.float32)  # not multiples of 32: padded
    got = model.predict(pixels, np.ones((100, 90), bool), (slice(0, 100), slice(0, 90)))
    with torch.inference_mode():
        padded = torch.nn.functional.pad(torch.from_numpy(pixels[None]), [0, 6, 0, 28])
        direct = net(padded)[0, :, :100, :90].argmax(0).numpy()
    np.testing.assert_array_equal(got, direct)


def _unet_cfg(weights: Path) -> object:
    return load_config(overrides=["model.kind=unet", f"model.weights={weights}",
                                  "model.classes=[a, b, c]", "model.params={depth: 2, base: 4}"])


class _Payload:
    """Stands for whatever a malicious pickle would run on load."""


def _bad_weights(kind: str, folder: Path, torchscript: Path) -> Path:
    if kind == "torchscript":
        return torchscript
    path = folder / f"{kind}.pt"
    good = UNet(3, 3, dims=2, base=4, depth=2).state_dict()
    if kind == "pickled object":
        torch.save({"net": _Payload()}, path)
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "not torch":
        path.write_text("these are not weights\n")
    elif kind == "wrong keys":
        torch.save({f"layer.{k}": v for k, v in good.items()}, path)
    elif kind == "wrong shapes":
        torch.save(UNet(3, 3, dims=2, base=8, depth=2).state_dict(), path)
    return path


@pytest.mark.parametrize("kind, reason", [
    ("pickled object", "refusing to unpickle"),
    ("plain pickle", "refusing to unpickle"),
    ("not torch", "not a torch state_dict file"),
    ("wrong keys", r"do not fit a 2-D unet .*missing keys .*unexpected keys"),
    ("wrong shapes", r"55 shape mismatches, file vs model \(e.g. encoders.0.0.weight"),
    ("torchscript", "is a TorchScript archive, not a state_dict; use model.kind=torchscript"),
])
def test_bad_weights_give_one_line_errors(kind, reason, tmp_path, dilated_model):
    path = _bad_weights(kind, tmp_path, dilated_model)
    with pytest.raises(SegflowError, match=reason) as err:
        build_model(_unet_cfg(path), InputSpec(bands=3, dtype="uint8"), "scene.tif")
    assert err.value.source == str(path) and "\n" not in str(err.value)


def test_unet_weights_for_another_band_count_are_refused(tmp_path):
    path = tmp_path / "unet.pt"
    torch.save(UNet(3, 3, dims=2, base=4, depth=2).state_dict(), path)
    with pytest.raises(SegflowError, match=r"bands=5.*shape mismatches"):
        build_model(_unet_cfg(path), InputSpec(bands=5, dtype="uint8"), "scene.tif")


def test_segnet_through_the_flow_equals_a_whole_image_pass(tmp_path, dask_address):
    """A seeded SegNet on the real Landsat scene in 4x4 chunks of 128 (tiles of 64, halo = its
    receptive field of 35): the mask equals one whole-image forward pass. BatchNorm keeps the
    scene's statistics and the head is centred, so that the random net splits it into 4 classes
    with few near-ties."""
    with rasterio.open(SAMPLE) as src:
        pixels = src.read()
    valid = (pixels != -99999).all(axis=0)
    mean, std = pixels[:, valid].mean(axis=1), pixels[:, valid].std(axis=1)
    x = (pixels - mean[:, None, None]) / std[:, None, None]
    x[:, ~valid] = 0
    scene = torch.from_numpy(x[None].astype(np.float32))
    torch.manual_seed(0)
    net = SegNet(5, 4, base=8, depth=3, convs=2)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = this one batch's
    with torch.no_grad():
        net.train()(scene)
        net.head.bias -= net.eval()(scene).mean((0, 2, 3))
        logits = net(scene)[0].numpy()
    assert len(np.unique(logits.argmax(0)[valid])) == 4
    weights = tmp_path / "segnet.pt"
    torch.save(net.state_dict(), weights)
    cfg = load_config(overrides=[
        "model.kind=segnet", f"model.weights={weights}", "model.classes=[a, b, c, d]",
        "model.params={base: 8, depth: 3, convs: 2}",
        f"model.normalize={{mean: {mean.tolist()}, std: {std.tolist()}}}",
        "tiling.chunk=128", "tiling.tile=64", f"tiling.halo={segnet_receptive_field(3, 2)}"])
    result = segment_image(str(SAMPLE), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    assert result["chunks_total"] == 16
    mask = _mask(result)
    assert (mask[~valid] == 255).all()
    assert _agree_but_near_ties(mask, logits, valid) <= 20


def test_segnet_refuses_volumes_in_one_line(tmp_path):
    path = tmp_path / "segnet.pt"
    torch.save(SegNet(1, 3, base=4, depth=2).state_dict(), path)
    for spec, params in ((InputSpec(bands=1, dtype="float32", ndim=3), "{depth: 2, base: 4}"),
                         (InputSpec(bands=1, dtype="float32"), "{dims: 3, depth: 2, base: 4}")):
        cfg = load_config(overrides=["model.kind=segnet", f"model.weights={path}",
                                     "model.classes=[a, b, c]", f"model.params={params}"])
        with pytest.raises(SegflowError, match="segnet is 2-D") as err:
            build_model(cfg, spec, "volume.nii")
        assert "\n" not in str(err.value)
