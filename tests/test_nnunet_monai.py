"""An nnU-Net trained folder and a MONAI bundle on the real MNI template (3 mm) through the
Prefect flow on the Dask cluster, each against a whole-volume pass of the same model at the
array level: the MONAI bundle's BatchNorm UNet tiles exactly; nnU-Net's InstanceNorm network
cannot, and the share of voxels whose class changes is measured and bounded here (the figure
README's nnU-Net page states). Random weights: quality needs the user's trained folder."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.errors import UserError
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.plan.job import plan_job
from segflow.tasks.sources.registry import open_source
from segflow.testing.models import predict_whole
from tests import model_forms as forms
from tests.mni import template, write


@pytest.fixture(scope="module")
def mni(tmp_path_factory):
    volume, _, affine = template(step=3)
    return write(tmp_path_factory.mktemp("mni") / "mni.nii.gz", volume, affine)


def _flow_and_whole(mni, out, dask_address, overrides, chunk, tile):
    """The flow's mask (``chunk`` and ``tile`` sides) and the whole-volume pass of the same
    model."""
    tiled = load_config(overrides=[*overrides, f"tiling.chunk={chunk}", f"tiling.tile={tile}",
                                   "output.pyramid=false"])
    result = segment_image(str(mni), str(out), tiled.model_dump(mode="json"), dask_address)
    assert result["status"] == "succeeded"
    mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
    whole_cfg = load_config(overrides=[*overrides, "tiling.tile=4096", "tiling.chunk=4096"])
    source = open_source(str(mni), whole_cfg.input)
    model = build_model(whole_cfg, InputSpec(1, source.dtype, 3), str(mni))
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2,
                dashboard_address=None) as client:
        model.fit(source, client)
    return mask, predict_whole(model, source), source.read(
        tuple(slice(0, n) for n in source.spatial_shape))[1]


def test_a_monai_bundle_through_the_flow_equals_a_whole_volume_pass(mni, tmp_path,
                                                                   dask_address):
    bundle = forms.monai_bundle(tmp_path / "bundle", pixdim=3.0)
    overrides = ["model.kind=monai_bundle", f"model.weights={bundle}",
                 "model.params.receptive_field=16", "model.params.stride=2",
                 "tiling.halo=16"]
    mask, whole, valid = _flow_and_whole(mni, tmp_path / "out", dask_address, overrides, 32, 32)
    assert len(np.unique(whole[valid])) >= 2
    differ = (mask[valid] != whole[valid]).mean()
    print(f"MONAI bundle: tiled vs whole-volume classes differ in {differ:.4%} of voxels")
    assert differ <= 0.001  # float32 near-ties only: the halo covers the receptive field


def test_an_nnunet_folder_through_the_flow_and_its_tiling_difference(mni, tmp_path,
                                                                      dask_address):
    folder = forms.nnunet_folder(tmp_path / "Dataset999__nnUNetPlans__3d_fullres", spacing=3.0)
    overrides = ["model.kind=nnunet", f"model.weights={folder}", "tiling.halo=16",
                 "tiling.stitch=gaussian"]
    with pytest.warns(Warning, match="InstanceNorm3d"):
        mask, whole, valid = _flow_and_whole(mni, tmp_path / "out", dask_address, overrides,
                                             48, 48)
    assert len(np.unique(whole[valid])) >= 2
    differ = (mask[valid] != whole[valid]).mean()
    print(f"nnU-Net (InstanceNorm): tiled vs whole-volume classes differ in {differ:.2%} of "
          "voxels (48-voxel chunks and tiles, halo 16, gaussian stitching)")
    assert differ < 0.25


def test_an_nnunet_card_refuses_a_volume_at_another_spacing(mni, tmp_path):
    folder = forms.nnunet_folder(tmp_path / "Dataset999__nnUNetPlans__3d_fullres", spacing=0.5)
    cfg = load_config(overrides=["model.kind=nnunet", f"model.weights={folder}"])
    with pytest.raises(UserError) as error:
        plan_job(str(mni), str(tmp_path / "out"), cfg)
    assert "pixel size 0.5 x 0.5 x 0.5 mm (tolerance 25%), the input's is 3 x 3 x 3 millimeter" \
        in str(error.value)


@pytest.mark.parametrize("scheme", ["ZScoreNormalization", "CTNormalization"])
def test_nnunet_normalisation_is_the_plans_scheme_over_the_whole_volume(mni, tmp_path, scheme):
    """z-score: the mean and std of the whole volume (NumPy here), not of any tile; CT: the
    dataset's percentile clip, mean and std from the plans. A checkpoint holding another
    pickled object loads only with ``model.trust_checkpoint``."""
    import argparse

    import nibabel as nib
    from distributed import Client

    folder = forms.nnunet_folder(tmp_path / "Dataset999__nnUNetPlans__3d_fullres", spacing=3.0,
                                 norm=scheme, pickled=argparse.Namespace(code=1))
    overrides = ["model.kind=nnunet", f"model.weights={folder}"]
    source = open_source(str(mni), load_config().input)
    spec = InputSpec(1, source.dtype, 3)
    with pytest.raises(UserError, match="model.trust_checkpoint: true"):
        build_model(load_config(overrides=overrides), spec, str(mni))
    model = build_model(load_config(overrides=[*overrides, "model.trust_checkpoint=true"]),
                        spec, str(mni))
    with Client(processes=False, n_workers=1, threads_per_worker=2,
                dashboard_address=None) as client:
        model.fit(source, client)
    norm = model.intensity.normalize
    if scheme == "CTNormalization":
        assert model.intensity.clip == (10.0, 900.0)
        assert norm.mean == [400.0] and norm.std == [150.0]
    else:
        volume = np.asarray(nib.load(mni).dataobj, np.float64)
        assert norm.mean[0] == pytest.approx(volume.mean(), rel=1e-9)
        assert norm.std[0] == pytest.approx(volume.std(), rel=1e-9)


def test_a_2d_nnunet_configuration_runs_slice_by_slice_in_nnunets_axis_order(mni, tmp_path):
    """A 2-D configuration on a volume: each slice along nnU-Net's first axis (SimpleITK's z,
    the NIfTI's last voxel axis) through the network, computed here with the network itself
    on NumPy slices of the z-scored volume."""
    import nibabel as nib
    from distributed import Client
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    folder = forms.nnunet_folder(tmp_path / "Dataset999__nnUNetPlans__2d", spacing=3.0, dims=2)
    cfg = load_config(overrides=["model.kind=nnunet", f"model.weights={folder}",
                                 "tiling.tile=4096", "tiling.chunk=4096"])
    source = open_source(str(mni), cfg.input)
    model = build_model(cfg, InputSpec(1, source.dtype, 3), str(mni))
    with Client(processes=False, n_workers=1, threads_per_worker=2,
                dashboard_address=None) as client:
        model.fit(source, client)
    got = predict_whole(model, source)

    import torch

    volume = np.asarray(nib.load(mni).dataobj, np.float64)
    z = ((volume - volume.mean()) / volume.std()).astype(np.float32)
    state = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    net = PlainConvUNet(input_channels=1, num_classes=4, deep_supervision=False, n_stages=3,
                        features_per_stage=[8, 16, 32], conv_op=torch.nn.Conv2d,
                        kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]],
                        n_conv_per_stage=[2, 2, 2], n_conv_per_stage_decoder=[2, 2],
                        conv_bias=True, norm_op=torch.nn.InstanceNorm2d,
                        norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    net.load_state_dict(state["network_weights"])
    net.eval()
    sitk = np.transpose(z, (2, 1, 0))  # SimpleITK's (z, y, x) array of the NIfTI
    h, w = sitk.shape[1:]
    padded = np.pad(sitk, ((0, 0), (0, -h % 4), (0, -w % 4)))
    with torch.no_grad():
        logits = net(torch.from_numpy(padded[:, None]))[:, :, :h, :w]
    expected = np.transpose(logits.argmax(1).numpy(), (2, 1, 0))
    assert len(np.unique(expected)) >= 2
    assert (got == expected).mean() > 0.999  # float32 near-ties only
