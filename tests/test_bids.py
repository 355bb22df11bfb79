"""BIDS datasets as batches: one run per T1w image the filter selects (not the T2w, the
functional runs or the derivatives), image ids and catalog columns from the BIDS entities."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from segflow.tasks.config import BidsFilter
from segflow.tasks.errors import UserError
from segflow.tasks.intake.bids import bids_images, entities

DATA = Path(__file__).parent / "data"
CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A small BIDS tree of real T1 copies: two subjects, two sessions of sub-01."""
    root = tmp_path / "ds"
    (root / "dataset_description.json").parent.mkdir()
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "segflow test", "BIDSVersion": "1.9.0"}))
    for rel in ("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii",
                "sub-01/ses-2/anat/sub-01_ses-2_acq-mprage_T1w.nii",
                "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii",
                "sub-02/ses-1/anat/sub-02_ses-1_T2w.nii",
                "sub-02/ses-1/func/sub-02_ses-1_task-rest_bold.nii",
                "derivatives/fmriprep/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / "nibabel_anatomical.nii", root / rel)
    return root


def test_the_filter_selects_raw_images_by_entities(dataset):
    found = [Path(p).relative_to(dataset).as_posix()
             for p in bids_images(str(dataset), BidsFilter())]
    assert found == ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii",
                     "sub-01/ses-2/anat/sub-01_ses-2_acq-mprage_T1w.nii",
                     "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"]
    assert len(bids_images(str(dataset), BidsFilter(session="1"))) == 2
    assert len(bids_images(str(dataset), BidsFilter(acquisition="mprage"))) == 1
    assert len(bids_images(str(dataset), BidsFilter(datatype="func", suffix="bold",
                                                    task="rest"))) == 1
    assert entities("sub-01_ses-2_acq-mprage_T1w.nii.gz") == {
        "subject": "01", "session": "2", "acquisition": "mprage", "suffix": "T1w"}
    assert entities("T1w.nii") is None and entities("sub-01_bad_T1w.nii") is None
    with pytest.raises(UserError) as error:
        bids_images(str(dataset / "sub-01"), BidsFilter())
    assert "not a BIDS dataset: no dataset_description.json" in str(error.value)


def test_a_bids_batch_runs_each_t1w_with_subject_and_session_columns(dataset, tmp_path, cli):
    out = tmp_path / "out"
    code, stdout, _ = cli("batch", dataset, "--out", out, "--config", CONFIGS / "mri.yaml",
                          "--set", "input.bids.suffix=T1w", "--set", "tiling.chunk=64")
    assert code == 0, stdout
    assert "3 succeeded" in stdout
    code, table, _ = cli("query", "select subject, session, acquisition, image_id, status "
                         "from runs order by subject, session", "--out", out, "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(table)))[1:]
    assert [r[:3] for r in rows] == [["01", "1", ""], ["01", "2", "mprage"], ["02", "1", ""]]
    assert [r[3].rsplit("-", 1)[0] for r in rows] == [
        "sub-01_ses-1_T1w", "sub-01_ses-2_acq-mprage_T1w", "sub-02_ses-1_T1w"]
    assert {r[4] for r in rows} == {"succeeded"}
    code, grouped, _ = cli("query", "select subject, count(*) as n, sum(area) as ml "
                           "from class_stats join runs using (run_id) group by subject "
                           "order by subject", "--out", out, "--format", "csv")
    assert code == 0
    assert [(r[0], r[1]) for r in list(csv.reader(io.StringIO(grouped)))[1:]] == [
        ("01", "6"), ("02", "3")]  # three tissue classes per run
