"""MRI volumes through the same flow: 3-D chunks with a 3-D halo, exact tiling, volumes in mL.

The tissue model's fit samples ``FIT`` voxels here (the flow's figures do not depend on how
many; its quality is tests/test_tissue.py's), and its chunk invariance is checked on arrays:
the flow's 3-D chunk path is the TorchScript test's."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.errors import SegflowError
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.plan.grid import plan_chunks
from segflow.tasks.sources.volume import open_nifti
from segflow.testing import predict_chunked

CONFIGS = Path(__file__).parents[1] / "configs"
DATA = Path(__file__).parent / "data"
FIT = "model.params.fit_voxels=200000"
NO_PYRAMID = "output.pyramid=false"  # level 0 is what these tests read


@pytest.fixture(scope="module")
def mri_run(head_nii, tmp_path_factory, dask_address) -> dict:
    """``configs/mri.yaml`` on the head in 64-voxel chunks, through the flow."""
    cfg = load_config(CONFIGS / "mri.yaml", ["tiling.chunk=64", FIT, NO_PYRAMID])
    return segment_image(str(head_nii), str(tmp_path_factory.mktemp("mri") / "out"),
                         cfg.model_dump(mode="json"), dask_address)


def test_reader_slices_match_nibabel_for_a_big_endian_las_volume():
    # An LAS file is presented as nibabel's closest canonical (RAS+) volume: x reversed.
    path = DATA / "nibabel_anatomical.nii"
    vol = open_nifti(str(path))
    canonical = nib.as_closest_canonical(nib.load(path))
    expected = np.asarray(canonical.dataobj)
    assert vol.spatial_shape == expected.shape == (33, 41, 25)
    pixels, valid = vol.read((slice(3, 20), slice(0, 41), slice(10, 25)))
    assert pixels.dtype == np.int16 and pixels.dtype.byteorder in "=|<"
    np.testing.assert_array_equal(pixels[0], expected[3:20, :, 10:25])
    assert valid.all()
    sample, _ = vol._read_decimated(4)
    np.testing.assert_array_equal(sample[0], expected[::4, ::4, ::4])
    attrs = vol.spatial_ref().to_attrs()
    assert attrs["orientation"] == "RAS" and attrs["source_orientation"] == "LAS"
    assert attrs["flipped"] == [True, False, False] and vol.dims == ("x", "y", "z")
    np.testing.assert_allclose(attrs["affine"], canonical.affine)
    np.testing.assert_allclose(attrs["source_affine"], nib.load(path).affine)
    assert attrs["voxel_size_mm"] == [2.0, 2.0, 2.0]
    assert vol.voxel_mm3() == pytest.approx(8.0)


def test_a_permuted_volume_keeps_its_axis_order_and_ascends_in_ras(tmp_path):
    # The same scan stored PIR (axis 0 runs posterior, 1 inferior, 2 right): each axis is
    # named after its world axis and read reversed where it runs against it, so the presented
    # volume is nibabel's canonical one with its axes in the file's order.
    img = nib.load(DATA / "nibabel_anatomical.nii")
    to_pir = nib.orientations.ornt_transform(nib.io_orientation(img.affine),
                                             nib.orientations.axcodes2ornt("PIR"))
    path = tmp_path / "pir.nii"
    nib.save(img.as_reoriented(to_pir), path)
    vol = open_nifti(str(path))
    assert vol.dims == ("y", "z", "x") and vol.flipped == (True, True, False)
    presented = vol.read(tuple(slice(0, n) for n in vol.spatial_shape))[0][0]
    canonical = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_array_equal(np.transpose(presented, (2, 0, 1)),
                                  np.asarray(canonical.dataobj))
    affine = np.asarray(vol.spatial_ref().to_attrs()["affine"])
    assert "".join(nib.aff2axcodes(affine)) == "ASR"  # every axis ascending
    np.testing.assert_allclose(affine[:3, 3], canonical.affine[:3, 3])  # the same corner


def test_not_a_volume_is_a_clear_error(tmp_path):
    bad = tmp_path / "scan.nii"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(SegflowError, match="not a readable NIfTI volume"):
        open_nifti(str(bad))


def test_tiled_3d_torchscript_equals_whole_volume_pass(head_nii, dilated_model_3d, tmp_path,
                                                        dask_address):
    # 98x114x82 voxels; chunk 40 and tile 24 divide no axis; halo 4 >= receptive field 3.
    cfg = load_config(overrides=[
        "model.kind=torchscript", f"model.weights={dilated_model_3d}",
        "model.params.receptive_field=3", "tiling.chunk=40", "tiling.tile=24",
        "tiling.halo=4", "tiling.batch=2", "tiling.skip_empty=false", NO_PYRAMID])
    result = segment_image(str(head_nii), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    assert result["modality"] == "volume" and result["chunks_total"] == 3 * 3 * 3
    tiled = zarr.open_array(result["output_uri"], path="0", mode="r")[:]

    # the flow sees the LAS file with every axis ascending in RAS+, as nibabel's canonical
    canonical = nib.as_closest_canonical(nib.load(head_nii))
    voxels = np.asarray(canonical.dataobj).astype(np.float32) / 32767.0
    module = torch.jit.load(str(dilated_model_3d)).eval()
    with torch.inference_mode():
        logits = module(torch.from_numpy(voxels[None, None]))[0].numpy()
    whole = logits.argmax(0)
    assert len(np.unique(whole)) > 1
    # 3-D convolutions pick different float32 kernels for different input sizes, so logits
    # agree to ~1e-6, not bit for bit: an exact tie-break may flip where the two best classes
    # are that close. Everywhere else the tiled mask must equal the whole-volume pass.
    top2 = np.sort(logits, axis=0)[-2:]
    near_tie = (top2[1] - top2[0]) < 1e-4
    differ = tiled != whole
    assert not (differ & ~near_tie).any()
    assert differ.sum() <= 10


def test_tissue_volumes_in_ml_equal_voxel_counts_times_the_affine(head_nii, mri_run):
    result = mri_run
    mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
    voxel_ml = abs(np.linalg.det(nib.load(head_nii).affine[:3, :3])) / 1000.0
    assert voxel_ml == pytest.approx(0.001)
    head = mask != 255
    stats = {r["class_name"]: r for r in result["class_stats"]}
    assert list(stats) == ["csf", "grey_matter", "white_matter"]
    for class_id, name in enumerate(stats):
        count = int((mask == class_id).sum())
        assert count > 0
        assert stats[name]["pixels"] == count and stats[name]["area_unit"] == "mL"
        assert stats[name]["area"] == pytest.approx(count * voxel_ml, rel=1e-12)
        assert stats[name]["fraction"] == pytest.approx(count / head.sum())
    # The air around the head is no tissue: nodata, outside the fractions.
    assert not head[:8].any() and head.mean() < 0.5


def test_volume_mask_does_not_depend_on_chunk_size(head_nii, client):
    """The tissue model fitted as a run fits it, predicted chunk by chunk with the config's
    halo as workers do (the bias field at each voxel's place in the volume): 48-voxel chunks
    give the one-chunk mask."""
    source = open_nifti(str(head_nii))
    masks = []
    for chunk in (48, 128):
        cfg = load_config(CONFIGS / "mri.yaml", [f"tiling.chunk={chunk}", FIT])
        model = build_model(cfg, InputSpec(bands=1, dtype=source.dtype, ndim=3), source.uri)
        model.fit(source, client)
        assert len(plan_chunks(source.spatial_shape, chunk, cfg.tiling.halo).chunks) == (
            3 * 3 * 2 if chunk == 48 else 1)
        masks.append(predict_chunked(model, source, chunk, cfg.tiling.halo))
    np.testing.assert_array_equal(masks[0], masks[1])
    assert len(np.unique(masks[0])) == 4  # three tissue classes and the air around the head


def test_ome_zarr_volume_gives_the_same_tissue_classes_as_its_nifti(head_nii, mri_run,
                                                                    tmp_path, dask_address):
    """The same voxels as an OME-Zarr image (1 mm scale, RAS+ as OME-Zarr needs: positive
    scales) segment to the same mask."""
    canonical = nib.as_closest_canonical(nib.load(head_nii))
    voxels = np.asarray(canonical.dataobj)
    store = tmp_path / "head.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.create_array("s0", data=voxels, chunks=(32, 32, 32), dimension_names=["x", "y", "z"])
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "millimeter"} for a in "xyz"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0]},
            {"type": "translation", "translation": canonical.affine[:3, 3].tolist()}]}]}]}

    cfg = load_config(CONFIGS / "mri.yaml", ["tiling.chunk=64", FIT, NO_PYRAMID]
                      ).model_dump(mode="json")
    from_zarr = segment_image(str(store), str(tmp_path / "z"), cfg, dask_address)
    from_nii = mri_run  # the same config on the NIfTI
    assert from_zarr["modality"] == "volume"
    spatial = [zarr.open_group(r["output_uri"], mode="r").attrs["spatial"]
               for r in (from_zarr, from_nii)]
    np.testing.assert_allclose(spatial[0]["affine"], spatial[1]["affine"])
    np.testing.assert_array_equal(
        zarr.open_array(from_zarr["output_uri"], path="0", mode="r")[:],
        zarr.open_array(from_nii["output_uri"], path="0", mode="r")[:])
    assert [r["area"] for r in from_zarr["class_stats"]] == pytest.approx(
        [r["area"] for r in from_nii["class_stats"]])
