"""Small models written in the forms users hold them, by each form's own tools: a Hugging Face
folder (``save_pretrained``), TorchGeo weights (its U-Net's state_dict for a weights enum
member), an nnU-Net v2 trained folder (plans and checkpoint in nnU-Net's format, the network
from nnU-Net's ``dynamic_network_architectures``) and a MONAI bundle (``monai.bundle``'s
``init_bundle``). Random weights: the tests prove the pipeline, not the quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from segflow.tasks.models.vision_ops import import_torchvision

import_torchvision()  # transformers, timm and torchgeo import torchvision: segflow's shim first

LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3}


def segformer(folder: Path, labels: int = 4, bands: int = 3) -> Path:
    """A tiny SegFormer with its image processor's config, ``id2label`` named."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    names = {i: f"label_{i}" for i in range(labels)}
    config = SegformerConfig(num_channels=bands, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
                             hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2],
                             mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=32, num_labels=labels,
                             id2label=names, label2id={v: k for k, v in names.items()})
    net = SegformerForSemanticSegmentation(config).eval()
    if labels > 254:  # every cell's top class is 280: ids beyond 254 for sure
        with torch.no_grad():
            net.decode_head.classifier.weight.zero_()
            net.decode_head.classifier.bias.copy_(-((torch.arange(labels) - 280.0) ** 2))
    net.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SegformerImageProcessor", "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "do_resize": True,
        "size": {"height": 512, "width": 512}}))
    return folder


def torchgeo_unet(path: Path, member: str) -> Path:
    """TorchGeo's U-Net for ``member`` with seeded random weights, saved as its state_dict
    (the layout of the member's published file)."""
    from segflow.tasks.models.torchgeo_model import weights_member

    meta = weights_member(member, str(path)).meta
    import torchgeo.models

    torch.manual_seed(0)
    net = torchgeo.models.unet(weights=None, classes=meta["num_classes"],
                               in_channels=meta["in_chans"], encoder_name=meta["encoder"],
                               encoder_weights=None)
    torch.save(net.state_dict(), path)
    return path


def nnunet_folder(folder: Path, spacing: float = 1.0, norm: str = "ZScoreNormalization",
                  logged: bool = True, pickled: object | None = None, dims: int = 3) -> Path:
    """An nnU-Net v2 trained folder of a 3-stage 3-D PlainConvUNet (InstanceNorm, as nnU-Net
    plans it) for one T1 channel and four labels; its checkpoint in the layout
    ``nnUNetTrainer.save_checkpoint`` writes, the training log holding NumPy scalars as a
    trained one does (``logged``), or an arbitrary pickled object (``pickled``)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    arch_kwargs = {
        "n_stages": 3, "features_per_stage": [8, 16, 32],
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d", "kernel_sizes": [[3] * dims] * 3,
        "strides": [[1] * dims, [2] * dims, [2] * dims],
        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [32] * dims, "spacing": [spacing] * dims,
        "median_image_size_in_voxels": [64] * dims, "normalization_schemes": [norm],
        "use_mask_for_norm": [False],
        "architecture": {"network_class_name":
                         "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    plans = {"dataset_name": "Dataset999_MNI", "plans_name": "nnUNetPlans",
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres" if dims == 3 else "2d": configuration},
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": 1000.0, "mean": 400.0, "median": 400.0, "min": 0.0,
                 "percentile_00_5": 10.0, "percentile_99_5": 900.0, "std": 150.0}}}
    dataset = {"channel_names": {"0": "T1"}, "labels": LABELS, "numTraining": 1,
               "file_ending": ".nii.gz"}
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    torch.manual_seed(0)
    kwargs = {**arch_kwargs, "conv_op": getattr(torch.nn, f"Conv{dims}d"),
              "norm_op": getattr(torch.nn, f"InstanceNorm{dims}d"), "nonlin": torch.nn.LeakyReLU}
    net = PlainConvUNet(input_channels=1, num_classes=len(LABELS), deep_supervision=True,
                        **kwargs)
    log = {"mean_fg_dice": [np.float32(0.5)], "ema_fg_dice": [np.float32(0.5)],
           "train_losses": [np.float32(-0.2)], "lrs": [0.01]} if logged else {}
    checkpoint = {"network_weights": net.state_dict(), "optimizer_state": {},
                  "grad_scaler_state": None, "logging": log,
                  "_best_ema": np.float32(0.5) if logged else None, "current_epoch": 1,
                  "init_args": {"plans": plans, "fold": 0,
                                "configuration": "3d_fullres" if dims == 3 else "2d",
                                "dataset_json": dataset, "device": torch.device("cpu")},
                  "trainer_name": "nnUNetTrainer",
                  "inference_allowed_mirroring_axes": tuple(range(dims))}
    if pickled is not None:
        checkpoint["extra"] = pickled
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def monai_bundle(folder: Path, pixdim: float = 1.0) -> Path:
    """A MONAI bundle written by ``monai.bundle.scripts.init_bundle``: a small 3-D UNet with
    BatchNorm (local in eval mode, so tiles are exact), the volume's own z-score over non-zero
    voxels, ``Spacingd`` at ``pixdim`` mm, class names in ``channel_def``."""
    import shutil

    from monai.bundle import ConfigParser
    from monai.bundle.scripts import init_bundle
    from monai.bundle.utils import DEFAULT_METADATA

    shutil.rmtree(folder, ignore_errors=True)
    names = {str(v): k for k, v in LABELS.items()}
    metadata = {**DEFAULT_METADATA, "name": "segflow test bundle", "task": "4-class MR",
                "network_data_format": {
                    "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR",
                                         "num_channels": 1, "spatial_shape": [32, 32, 32],
                                         "dtype": "float32", "channel_def": {"0": "T1"}}},
                    "outputs": {"pred": {"type": "image", "format": "segmentation",
                                         "num_channels": 4, "spatial_shape": [32, 32, 32],
                                         "dtype": "float32", "channel_def": names}}}}
    inference = {
        "bundle_root": ".",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": 4, "channels": [8, 16], "strides": [2],
                        "num_res_units": 0, "norm": "batch"},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [pixdim] * 3},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
            {"_target_": "EnsureTyped", "keys": "image"}]}}
    torch.manual_seed(0)
    net = ConfigParser(inference).get_parsed_content("network_def")
    init_bundle(str(folder), network=net, metadata_str=metadata, inference_str=inference)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder
