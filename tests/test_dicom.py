"""DICOM MR series in: the MNI T1 written by SimpleITK as a scanner's series (int16 with a
rescale, shuffled file names) in two acquisition orientations segments exactly as SimpleITK's
NIfTI conversion of the same series; series that have no affine fail in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import InputConfig, load_config
from segflow.tasks.errors import UserError
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
