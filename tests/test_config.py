"""The config schema: documented defaults, strict keys, one-line errors, overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from segflow.tasks.config import JobConfig, load_config
from segflow.tasks.errors import SegflowError

CONFIGS = Path(__file__).parents[1] / "configs"


def test_defaults_file_documents_every_default():
    documented = yaml.safe_load((CONFIGS / "defaults.yaml").read_text())
    assert documented == JobConfig().model_dump(mode="json")


JOBS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "deployments.yaml")  # not a job:
# tests/test_deployments.py validates the deployments file


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    load_config(path)


def test_overrides_parse_yaml_scalars_and_nested_keys():
    cfg = load_config(CONFIGS / "landcover.yaml",
                      ["tiling.chunk=1024", "model.params.k=7", "input.bands=[1, 3]"])
    assert cfg.tiling.chunk == 1024 and cfg.model.params["k"] == 7
    assert cfg.input.bands == [1, 3]


@pytest.mark.parametrize("override, needle", [
    ("tiling.chunks=1", "tiling.chunks"),
    ("model.kind=magic", "model.kind"),
    ("tiling.chunk=0", "tiling.chunk"),
    ("nonsense", "key=value"),
    ("model.classes=[{id: 0, name: a, colour: reddish}]", "unknown colour 'reddish'"),
])
def test_bad_settings_are_one_line_errors(override, needle):
    with pytest.raises(SegflowError) as info:
        load_config(overrides=[override])
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_output_hash_ignores_where_it_runs_but_not_what_it_computes():
    base = load_config().output_hash()
    assert load_config(overrides=["cluster.n_workers=3", "tiling.batch=2"]).output_hash() == base
    assert load_config(overrides=["tiling.halo=8"]).output_hash() != base


def test_hand_started_workers_get_the_same_malloc_settings_as_local_ones():
    from segflow.tasks.runtime.cluster import WORKER_MALLOC

    shipped = yaml.safe_load((CONFIGS.parent / "infra" / "dask" / "segflow-workers.yaml")
                             .read_text())["distributed"]["nanny"]["pre-spawn-environ"]
    prefix = "distributed.nanny.pre-spawn-environ."
    assert {prefix + k: v for k, v in shipped.items()} == WORKER_MALLOC


def test_relative_paths_resolve_beside_the_config(tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "job.yaml").write_text("model: {kind: torchscript, weights: ../w/model.pt}\n"
                                     "cluster: {kind: slurm, spec: slurm.yaml}\n")
    cfg = load_config(folder / "job.yaml")
    assert cfg.model.weights == str((tmp_path / "w" / "model.pt").resolve())
    assert cfg.cluster.spec == str((folder / "slurm.yaml").resolve())
    # an override on the command line is the user's own path, left as given
    assert load_config(folder / "job.yaml", ["model.weights=m.pt"]).model.weights == "m.pt"


def test_any_css_colour_reaches_the_label_metadata_and_the_picture():
    """One parser everywhere: a colour name the config accepts is drawn by every output
    (it used to pass validation and fail in the pyramid after all inference had run)."""
    from segflow.tasks.mask.pyramid import ome_metadata
    from segflow.tasks.mask.quicklook import overlay

    cfg = load_config(overrides=[
        "model.classes=[{id: 0, name: a, colour: red}, {id: 1, name: b, colour: '#00ff00'},"
        " {id: 2, name: c, colour: 'rgb(0, 0, 255)'}]"])
    classes = cfg.model.classes
    ome = ome_metadata(("y", "x"), None, [1.0, 1.0], 1, classes, "x")
    assert [c["rgba"] for c in ome["image-label"]["colors"]] == [
        [255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]]
    black = np.zeros((1, 3, 3), np.uint8)
    drawn = overlay(black, np.array([[0, 1, 2]]), [c.model_dump() for c in classes], alpha=1.0)
    assert drawn[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


def test_a_misspelt_parameter_names_the_key_and_the_kind():
    with pytest.raises(SegflowError) as info:
        load_config(overrides=["model.kind=otsu", "model.params.sigmma=2"])
    message = str(info.value)
    assert "model.params.sigmma" in message and "model.kind=otsu" in message
    assert "(its parameters: band, sigma)" in message and "\n" not in message


@pytest.mark.parametrize("kind, override, needle", [
    ("kmeans", "model.params.k=1", "model.params.k=1: Input should be greater than or equal to 2"),
    ("kmeans", "model.params.k=many", "model.params.k='many': Input should be a valid integer"),
    ("adaptive", "model.params.block_size=50", "block_size=50: use an odd number >= 3"),
    ("threshold", "model.params.band=1", "model.params.value: required by model.kind=threshold"),
    ("index", "model.params.bands.blue=1", "model.params.bands.blue: unknown key"),
    ("unet", "model.params.dims=4", "model.params.dims=4"),
])
def test_wrong_types_and_ranges_are_one_line_errors(kind, override, needle):
    with pytest.raises(SegflowError) as info:
        load_config(overrides=[f"model.kind={kind}", override])
    assert needle in str(info.value) and f"model.kind={kind}" in str(info.value)
    assert "\n" not in str(info.value)


def test_params_are_checked_without_importing_the_model_or_its_libraries():
    """A config is checked before any pixel is read and in well under a second: the kind's
    Params class lives apart from the model's module (torch, Dask, scikit-image)."""
    import subprocess
    import sys

    code = ("import sys; from segflow.tasks.config import load_config\n"
            "load_config(overrides=['model.kind=unet', 'model.params.depth=2'])\n"
            "heavy = [m for m in ('torch', 'dask.array', 'distributed', 'skimage') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_the_catalog_and_the_store_record_one_config_hash(path, dask_address, tmp_path):
    """Planning never rewrites the config (``configs/nuclei.yaml`` turns instances on by its
    split): the runs row and the store's attributes hash the same config."""
    from distributed import Client

    from segflow.tasks.catalog.tables import new_run
    from segflow.tasks.mask.store import store_attrs
    from segflow.tasks.plan.job import fitted, plan_job

    data = Path(__file__).parent / "data"
    samples = CONFIGS.parent / "samples"
    source = {"mri.yaml": data / "nibabel_anatomical.nii",
              "pathology.yaml": data / "cmu1_pyramid.tif"}.get(
        path.name, samples / "nc_lsat7_2000_b12345.tif")
    if path.name.startswith("sentinel2"):  # a STAC item (tests/data/stac/make_stac.py)
        from tests.data.stac.make_stac import make_scene

        source = make_scene(tmp_path)
    cfg = load_config(path)
    job = plan_job(str(source), "/nowhere", cfg)
    assert job.config is cfg
    row = new_run("run", str(source), cfg)
    with Client(dask_address) as client:
        job = fitted(job, client)
    assert store_attrs(job)["segflow"]["config_hash"] == row["config_hash"]
    if cfg.stats.split != "none":
        assert job.instances and not cfg.stats.instances


def test_the_python_api_fails_as_fast_as_the_cli(tmp_path):
    """``segflow.segment_image`` checks the config and the file before Prefect or Dask start:
    the same one line as ``segflow segment``, and a missing image leaves its failed row."""
    import subprocess
    import sys

    code = ("import sys, segflow\n"
            "try:\n"
            f"    segflow.segment_image({str(tmp_path / 'x.tif')!r}, {str(tmp_path / 'r')!r},\n"
            "        {'model': {'kind': 'otsu', 'params': {'sigmma': 2}}})\n"
            "except Exception as exc:\n"
            "    print(exc)\n"
            "assert 'prefect' not in sys.modules and 'distributed' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == ("config: invalid config: model.params.sigmma: not a parameter of "
                           "model.kind=otsu (its parameters: band, sigma)")

    import segflow

    with pytest.raises(SegflowError) as info:
        segflow.segment_image(str(tmp_path / "missing.tif"), str(tmp_path / "r"),
                              {"model": {"kind": "otsu"}})
    assert str(info.value) == f"{tmp_path / 'missing.tif'}: no such file or folder"
    [row] = segflow.query_frame(str(tmp_path / "r"), "select status, error from runs"
                                ).to_dict("records")
    assert row == {"status": "failed", "error": str(info.value)}
