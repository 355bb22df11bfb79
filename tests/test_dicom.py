"""DICOM MR series in: the MNI T1 written by SimpleITK as a scanner's series (int16 with a
rescale, shuffled file names) in two acquisition orientations segments exactly as SimpleITK's
NIfTI conversion of the same series; series that have no affine fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import InputConfig, load_config
from segflow.tasks.errors import UserError
from segflow.tasks.mask.store import open_store_group
from segflow.tasks.sources.registry import open_source
from tests.data.dicom.make_dicom import ras_image, to_nifti, write_series
from tests.mni import template

CONFIGS = Path(__file__).parents[1] / "configs"
SETS = ["tiling.chunk=48", "model.params.fit_voxels=200000", "output.pyramid=false"]


@pytest.fixture(scope="module")
def t1():
    volume, _, affine = template(step=3)
    return ras_image(volume, affine)


@pytest.fixture(scope="module")
def scans(t1, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per orientation: the series' folder and its NIfTI conversion by SimpleITK."""
    root = tmp_path_factory.mktemp("dicom")
    found = {}
    for code, name in (("LPS", "axial"), ("PIL", "sagittal")):
        write_series(t1, root / name, code)
        found[name] = (root / name, to_nifti(root / name, root / f"{name}.nii.gz"))
    return found


@pytest.mark.parametrize("orientation", ["axial", "sagittal"])
def test_a_series_segments_as_its_nifti_conversion_voxel_for_voxel(scans, orientation,
                                                                   tmp_path, dask_address):
    folder, nifti = scans[orientation]
    cfg = load_config(CONFIGS / "mri.yaml", SETS).model_dump(mode="json")
    runs = [segment_image(str(src), str(tmp_path / name), cfg, dask_address)
            for src, name in ((folder, "dicom"), (nifti, "nifti"))]
    stores = [zarr.open_group(r["output_uri"], mode="r") for r in runs]
    # the same grid in world (RAS mm) coordinates ...
    np.testing.assert_allclose(stores[0].attrs["spatial"]["affine"],
                               stores[1].attrs["spatial"]["affine"], atol=1e-9)
    for key in ("axes", "source_affine", "flipped"):
        assert stores[0].attrs["spatial"][key] == stores[1].attrs["spatial"][key]
    # ... and the same class in every voxel
    masks = [np.asarray(s["0"][:]) for s in stores]
    np.testing.assert_array_equal(masks[0], masks[1])
    assert len(np.unique(masks[0])) == 4  # three tissues and the background
    assert runs[0]["modality"] == "volume"
    assert [r["area"] for r in runs[0]["class_stats"]] == [r["area"]
                                                           for r in runs[1]["class_stats"]]


def test_a_tilted_or_unevenly_spaced_series_fails_in_one_line(t1, tmp_path, cli):
    tilted = tmp_path / "tilted"
    write_series(t1, tilted, tilt_mm=0.5)
    uneven = tmp_path / "uneven"
    write_series(t1, uneven, drop=20)
    for folder, reason in ((tilted, "gantry tilt of 9.5 degrees"),
                           (uneven, "uneven slice spacing (3.000 to 6.000 mm)")):
        with pytest.raises(UserError) as error:
            open_source(str(folder), InputConfig())
        assert str(error.value).startswith(f"{folder}: ") and reason in str(error.value)
        assert "\n" not in str(error.value)
    code, out, err = cli("segment", tilted, "--out", tmp_path / "out", "--config",
                         CONFIGS / "mri.yaml")
    assert code != 0 and "gantry tilt" in err
    [row] = run_query(str(tmp_path / "out"), "select status, error from runs").to_pylist()
    assert row["status"] == "failed" and "gantry tilt" in row["error"]


def test_a_folder_of_several_series_needs_input_series(t1, tmp_path):
    folder = tmp_path / "study"
    write_series(t1, folder / "a", "LPS", description="T1w axial", series=1)
    write_series(t1, folder / "b", "PIL", description="T1w sagittal", series=2)
    with pytest.raises(UserError) as error:
        open_source(str(folder), InputConfig())
    assert "2 series here: set input.series to one of" in str(error.value)
    chosen = open_source(str(folder), InputConfig(series="T1w sagittal"))
    assert chosen.dims == ("y", "z", "x") and chosen.spatial_shape == (78, 63, 66)
    uid = open_source(str(folder / "a"), InputConfig()).series_uid  # type: ignore[attr-defined]
    assert open_source(str(folder), InputConfig(series=uid)).spatial_shape == (66, 78, 63)


def test_label_exports_a_dicom_viewer_and_itk_read_right(scans, tmp_path, dask_address):
    """A DICOM SEG over the series (read back with highdicom) and a NIfTI label map (read with
    SimpleITK) with 0 = background and nodata, the tissues 1..3, as every medical tool takes."""
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk

    folder, _ = scans["sagittal"]
    cfg = load_config(CONFIGS / "mri.yaml", [*SETS, "output.export=[nifti, dicom-seg]"])
    run = segment_image(str(folder), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                        dask_address)
    exports = {r["format"]: r["uri"] for r in run_query(
        str(tmp_path / "out"), "select format, uri from outputs where output = 'export'"
    ).to_pylist()}
    assert set(exports) == {"nifti", "dicom-seg"}
    store, meta = open_store_group(run["output_uri"])
    mask = np.asarray(store["0"][:])
    classes = {c["name"]: c["id"] for c in meta["classes"]}
    nodata = 255
    # the store's ids to the medical values: csf 1, grey matter 2, white matter 3, nodata 0
    medical = np.zeros(256, np.uint8)
    for value, name in enumerate(["csf", "grey_matter", "white_matter"], start=1):
        medical[classes[name]] = value
    medical[nodata] = 0

    # NIfTI, as ITK reads it: the file's own grid is the series' (column, row, slice) grid
    label = sitk.ReadImage(exports["nifti"])
    series = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    np.testing.assert_allclose(label.GetOrigin(), series.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(label.GetDirection(), series.GetDirection(), atol=1e-6)
    voxels = sitk.GetArrayFromImage(label)
    assert set(np.unique(voxels)) == {0, 1, 2, 3}
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(label)
    csf_ml = shape.GetPhysicalSize(1) / 1000
    [csf] = [r for r in run["class_stats"] if r["class_name"] == "csf"]
    assert csf_ml == pytest.approx(csf["area"], rel=1e-9)  # CSF is a label, not background
    assert (voxels == 0).sum() == (mask == nodata).sum()
    legend = json.loads(Path(exports["nifti"].removesuffix(".nii.gz") + ".json").read_text())
    assert legend["labels"]["1"]["name"] == "csf" and legend["labels"]["0"]["name"] == \
        "background"

    # DICOM SEG: segments, labels and frame of reference right, each frame its source slice
    seg = hd.seg.segread(exports["dicom-seg"])
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, folder.iterdir())}
    any_source = next(iter(sources.values()))
    assert seg.FrameOfReferenceUID == any_source.FrameOfReferenceUID
    assert seg.StudyInstanceUID == any_source.StudyInstanceUID
    assert list(seg.get_segment_numbers()) == [1, 2, 3]
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == \
        ["csf", "grey_matter", "white_matter"]
    ordered = sorted(sources, key=lambda uid: float(np.dot(
        sources[uid].ImagePositionPatient, np.cross(*np.reshape(
            sources[uid].ImageOrientationPatient, (2, 3))))))
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=ordered,
                                                combine_segments=True)
    np.testing.assert_array_equal(frames, voxels)  # ITK's (slice, row, column) of the NIfTI
    assert (frames == 1).sum() == (mask == classes["csf"]).sum()
