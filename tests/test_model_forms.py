"""Model forms beyond segflow's own weights (ONNX here; HF, TorchGeo, nnU-Net, MONAI in their
own files), model cards checked against the input, test-time augmentation and ensembles; at
the array level, each against an independent computation (torch or onnxruntime called directly,
NumPy flips), never against segflow's own output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from segflow.tasks.config import load_config
from segflow.tasks.errors import SegflowError, UserError
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.models.nets import UNet
from segflow.tasks.plan.job import plan_job
from segflow.tasks.sources.registry import open_source
from segflow.testing.models import full_box, predict_chunked, predict_whole
from tests.conftest import DilatedNet, export_onnx, write_pyramid_tiff

ROOT = Path(__file__).parents[1]
LANDSAT = ROOT / "samples" / "nc_lsat7_2000_b12345.tif"
DEMO = ROOT / "samples" / "landcover_unet.pt"
DEMO_CFG = ("model.params.num_classes=8",
            "model.normalize={mean: [78.386, 64.2676, 63.5604, 69.1132, 88.4055], "
            "std: [12.5374, 14.5693, 21.3879, 15.6462, 25.1653]}")


def _model(image: Path, *overrides: str):
    cfg = load_config(overrides=list(overrides))
    source = open_source(str(image), cfg.input)
    spec = InputSpec(bands=len(source.bands), dtype=source.dtype,
                     ndim=len(source.spatial_shape))
    return build_model(cfg, spec, str(image)), source


def _demo_unet() -> UNet:
    net = UNet(5, 8, dims=2, base=16, depth=3)
    net.load_state_dict(torch.load(DEMO, weights_only=True))
    return net.eval()


def _normalised(source) -> torch.Tensor:
    """The demo normalisation by hand, nodata 0, as (1, bands, h, w)."""
    pixels, valid = source.read(full_box(source))
    norm = yaml.safe_load(DEMO_CFG[1].split("=", 1)[1])
    mean = np.array(norm["mean"])[:, None, None]
    std = np.array(norm["std"])[:, None, None]
    x = np.where(valid, (pixels - mean) / std, 0.0).astype(np.float32)
    return torch.from_numpy(x[None])


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> Path:
    return export_onnx(_demo_unet(), tmp_path_factory.mktemp("onnx") / "unet.onnx", 5)


def test_onnx_export_of_the_demo_unet_equals_torch(demo_onnx):
    """The demo U-Net through segflow's onnx kind, against the torch module called directly:
    probabilities within 1e-4 and the same mask."""
    model, source = _model(LANDSAT, "model.kind=onnx", f"model.weights={demo_onnx}",
                           "model.params.stride=8", *DEMO_CFG[1:], "tiling.tile=4096")
    box = full_box(source)
    pixels, valid = source.read(box)
    labels, probs = model.predict_scores(pixels, valid, box)
    with torch.no_grad():
        expected = _demo_unet()(_normalised(source))[0].softmax(0).numpy()
    assert np.abs(probs - expected).max() < 1e-4
    np.testing.assert_array_equal(labels[valid], expected.argmax(0)[valid])
    assert model.classes[0].name == "class_0" and len(model.classes) == 8


def test_onnx_fixed_size_fp16_and_named_outputs(tmp_path):
    """A fixed 64 px model gets 64 px read windows (border tiles padded), a float16 model is
    fed float16, and params.output picks the logits among several outputs."""
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    torch.manual_seed(0)
    net = DilatedNet(bands=5).eval()
    fixed = export_onnx(net, tmp_path / "fixed.onnx", 5, fixed=64)
    model, source = _model(LANDSAT, "model.kind=onnx", f"model.weights={fixed}",
                           "model.params.receptive_field=7", "tiling.halo=8", *DEMO_CFG[1:])
    assert model.tile == 64 - 2 * 8
    whole = export_onnx(net, tmp_path / "dynamic.onnx", 5)
    dynamic, _ = _model(LANDSAT, "model.kind=onnx", f"model.weights={whole}",
                        "model.params.receptive_field=7", "tiling.tile=4096", *DEMO_CFG[1:])
    np.testing.assert_array_equal(predict_chunked(model, source, 128, 8),
                                  predict_whole(dynamic, source))

    half = tmp_path / "half.onnx"
    onnx.save(convert_float_to_float16(onnx.load(whole)), half)
    assert ort.InferenceSession(half).get_inputs()[0].type == "tensor(float16)"
    fp16, _ = _model(LANDSAT, "model.kind=onnx", f"model.weights={half}", *DEMO_CFG[1:])
    agree = predict_whole(fp16, source) == predict_whole(dynamic, source)
    assert agree.mean() > 0.99  # float16 rounding moves near-ties only

    class TwoOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            logits = self.net(x)
            return logits.softmax(1), logits

    two = tmp_path / "two.onnx"
    with pytest.warns(Warning):
        torch.onnx.export(TwoOutputs().eval(), (torch.zeros(1, 5, 32, 32),), str(two), dynamo=False,
                          input_names=["image"], output_names=["probs", "logits"],
                          dynamic_axes={"image": {2: "h", 3: "w"}})
    named, _ = _model(LANDSAT, "model.kind=onnx", f"model.weights={two}",
                      "model.params.output=logits", *DEMO_CFG[1:])
    np.testing.assert_array_equal(predict_whole(named, source), predict_whole(dynamic, source))


def test_tta_flips_is_the_mean_of_the_flipped_softmax(demo_onnx):
    """``model.tta: flips`` on the demo U-Net equals the mean softmax over the four mirrored
    inputs computed here with torch and NumPy flips; d4 adds the rotations."""
    model, source = _model(LANDSAT, "model.kind=unet", f"model.weights={DEMO}", *DEMO_CFG,
                           "model.tta=flips", "tiling.tile=4096")
    box = full_box(source)
    pixels, valid = source.read(box)
    labels, probs = model.predict_scores(pixels, valid, box)
    x = _normalised(source)
    net = _demo_unet()
    total = np.zeros(probs.shape, np.float64)
    with torch.no_grad():
        for axes in ((), (2,), (3,), (2, 3)):
            # the stride-8 net sees the image padded to a multiple of 8 on its high side, so
            # mirrored views pool on the same grid as the plain one
            h, w = x.shape[2:]
            padded = torch.nn.functional.pad(x, [0, -w % 8, 0, -h % 8])
            out = net(padded.flip(axes) if axes else padded).softmax(1)
            out = (out.flip(axes) if axes else out)[0, :, :h, :w].numpy()
            total += out
    expected = total / 4
    assert np.abs(probs - expected).max() < 1e-5
    np.testing.assert_array_equal(labels[valid], expected.argmax(0)[valid])


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_tta_tiled_equals_whole_for_a_finite_receptive_field(tmp_path, tta):
    torch.manual_seed(0)
    weights = tmp_path / "dilated.pt"
    torch.jit.script(DilatedNet(bands=5).eval()).save(str(weights))
    cfg = ("model.kind=torchscript", f"model.weights={weights}",
           "model.params.receptive_field=7", f"model.tta={tta}")
    whole, source = _model(LANDSAT, *cfg, "tiling.tile=4096")
    tiled, _ = _model(LANDSAT, *cfg, "tiling.tile=50", "tiling.halo=7")
    expected = predict_whole(whole, source)
    assert len(np.unique(expected)) >= 2
    np.testing.assert_array_equal(predict_chunked(tiled, source, 100, 7), expected)


def test_an_ensemble_is_the_mean_of_its_members(tmp_path, demo_onnx):
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    net = UNet(5, 8, dims=2, base=16, depth=3).eval()
    torch.save(net.state_dict(), other)
    member = (f"model.ensemble=[{{kind: unet, weights: {other}, "
              "params: {num_classes: 8}}]")
    model, source = _model(LANDSAT, "model.kind=onnx", f"model.weights={demo_onnx}",
                           "model.params.stride=8", *DEMO_CFG[1:], member, "tiling.tile=4096")
    box = full_box(source)
    pixels, valid = source.read(box)
    _, probs = model.predict_scores(pixels, valid, box)
    x = _normalised(source)
    with torch.no_grad():
        expected = (_demo_unet()(x).softmax(1) + net(x).softmax(1))[0].numpy() / 2
    assert np.abs(probs - expected).max() < 1e-4
    assert model.identity().startswith("ensemble(onnx(unet.onnx")

    with pytest.raises(UserError, match=r"model.ensemble\[0\] outputs classes"):
        _model(LANDSAT, "model.kind=onnx", f"model.weights={demo_onnx}", *DEMO_CFG[1:],
               f"model.ensemble=[{{kind: unet, weights: {other}, classes: [a, b, c, d, e, f, "
               "g, h]}]")


def _truncated_cog(path: Path, bands: int) -> Path:
    """A COG whose header and first blocks are whole but whose later pixel data is cut off:
    opening works (the reader decodes the first block to prove the file), reading the image
    fails, so a card error raised on it was raised before the image's pixels were read."""
    data = np.random.default_rng(0).integers(0, 255, (bands, 1024, 1024), dtype=np.uint8)
    profile = {"driver": "COG", "width": 1024, "height": 1024, "count": bands,
               "dtype": "uint8", "crs": "EPSG:32617", "blocksize": 256, "compress": "NONE",
               "overviews": "NONE", "transform": rasterio.transform.from_origin(0, 0, 10, 10)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    return path


def test_a_card_mismatch_fails_in_one_line_before_any_pixel_is_read(tmp_path, demo_onnx):
    card = tmp_path / "card.yaml"
    card.write_text(yaml.safe_dump({"bands": ["B02", "B03", "B04", "B08"], "pixel_size": 10,
                                    "unit": "m"}))
    image = _truncated_cog(tmp_path / "rgb.tif", 3)
    unread = open_source(str(image), load_config().input)
    with pytest.raises(SegflowError):  # the pixels really are unreadable
        unread.read(full_box(unread))
    torch.manual_seed(0)
    four = export_onnx(DilatedNet(bands=4).eval(), tmp_path / "four.onnx", 4)
    cfg = load_config(overrides=["model.kind=onnx", f"model.weights={four}",
                                 f"model.card={card}"])
    with pytest.raises(UserError) as error:
        plan_job(str(image), str(tmp_path / "out"), cfg)
    message = str(error.value)
    assert "model card of onnx(four.onnx): 4 bands (B02, B03, B04, B08), the input has 3" \
        in message and "\n" not in message

    # a 10 m card against a 0.5 µm slide: refused, there is no level that near
    slide = write_pyramid_tiff(tmp_path / "slide.tif", np.zeros((256, 256, 3), np.uint8),
                               mpp=0.5, levels=2)
    three = export_onnx(DilatedNet(bands=3).eval(), tmp_path / "three.onnx", 3)
    card.write_text(yaml.safe_dump({"num_bands": 3, "pixel_size": 10, "unit": "m",
                                    "on_mismatch": "resample"}))
    cfg = load_config(overrides=["model.kind=onnx", f"model.weights={three}",
                                 f"model.card={card}"])
    with pytest.raises(UserError) as error:
        plan_job(str(slide), str(tmp_path / "out"), cfg)
    assert "pixel size 10 m (tolerance 25%), the input's is 0.5 x 0.5 micrometer" \
        in str(error.value) and "\n" not in str(error.value)


def test_a_card_resamples_a_slide_through_its_pyramid(tmp_path):
    """A card at 1 µm on a 0.5 µm slide with ``on_mismatch: resample`` reads level 1."""
    torch.manual_seed(0)
    three = export_onnx(DilatedNet(bands=3).eval(), tmp_path / "three.onnx", 3)
    slide = write_pyramid_tiff(tmp_path / "slide.tif", np.full((512, 512, 3), 200, np.uint8),
                               mpp=0.5, levels=2)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"num_bands": 3, "pixel_size": 1.0, "unit": "um",
                                "on_mismatch": "resample", "classes": list("abcd")}))
    cfg = load_config(overrides=["model.kind=onnx", f"model.weights={three}",
                                 f"model.card={card}", "tiling.skip_empty=false"])
    job = plan_job(str(slide), str(tmp_path / "out"), cfg)
    assert job.reader.spatial_shape == (256, 256)
    assert job.reader.cell_size() == ("micrometer", [1.0, 1.0])
    assert [c.name for c in job.model.classes] == list("abcd")
    refused = card.read_text().replace("resample", "refuse")
    card.write_text(refused)
    with pytest.raises(UserError, match="pixel size 1 um"):
        plan_job(str(slide), str(tmp_path / "out"), cfg)


def test_an_onnx_file_carries_its_card(tmp_path):
    import onnx

    torch.manual_seed(0)
    path = export_onnx(DilatedNet(bands=5).eval(), tmp_path / "carded.onnx", 5)
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {"model_card": json.dumps(
        {"bands": ["coastal", "blue", "green", "red", "nir"], "classes": list("abcd")})})
    onnx.save(proto, path)
    model, _ = _model(LANDSAT, "model.kind=onnx", f"model.weights={path}", *DEMO_CFG[1:])
    assert model.card.bands[-1] == "nir" and [c.name for c in model.classes] == list("abcd")


def test_a_mask2former_folder_gives_its_post_processings_classes(tmp_path):
    """A universal model's semantic output: segflow's class ids against the image processor's
    own ``post_process_semantic_segmentation`` on the same normalised input."""
    transformers = pytest.importorskip("transformers")
    from segflow.tasks.models.vision_ops import import_torchvision

    import_torchvision()
    torch.manual_seed(0)
    names = {i: f"c{i}" for i in range(4)}
    backbone = transformers.SwinConfig(image_size=64, patch_size=4, embed_dim=8,
                                       depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                                       window_size=4,
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
        num_attention_heads=2, num_queries=8, num_labels=4, id2label=names,
        label2id={v: k for k, v in names.items()})
    folder = tmp_path / "m2f"
    net = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    net.save_pretrained(folder)
    image = tmp_path / "rgb.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    with rasterio.open(image, "w", driver="GTiff", width=64, height=64, count=3,
                       dtype="uint8") as dst:
        dst.write(data)
    model, source = _model(image, "model.kind=hf", f"model.weights={folder}",
                           "tiling.tile=4096")
    assert [c.name for c in model.classes] == ["c0", "c1", "c2", "c3"]
    ids = predict_whole(model, source)
    with torch.no_grad():
        out = net(pixel_values=torch.from_numpy(data[None].astype(np.float32) / 255))
    processor = transformers.Mask2FormerImageProcessor()
    expected = processor.post_process_semantic_segmentation(out, target_sizes=[(64, 64)])[0]
    # the processor resizes the mask logits to 384 px before the target size: near ties move
    assert (ids == expected.numpy()).mean() > 0.95
