"""What a person at a terminal sees: image ids named after the file, failures in under a second
before Prefect or Dask start, plain --help with an example per command, and ``segflow show`` /
``segflow runs`` reading back a real run's store and catalog."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import zarr

from segflow.flows.cli import EXAMPLES, _parser, main
from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import load_config
from segflow.tasks.sources.identity import image_id


@pytest.mark.parametrize("name, stem", [
    ("brain.nii.gz", "brain"), ("anatomical.nii", "anatomical"), ("CMU-1.svs", "CMU-1"),
    ("slide.ome.tif", "slide"), ("slide.OME.TIFF", "slide"), ("vol.ome.zarr", "vol"),
    ("scene.tif", "scene"), ("store.zarr/", "store"), ("x.ndpi", "x"), ("notes.txt", "notes.txt"),
])
def test_image_id_is_the_file_stem_plus_a_hash(name, stem):
    found = image_id(f"/data/{name}")
    assert found.rsplit("-", 1)[0] == stem and len(found.rsplit("-", 1)[1]) == 8


def _cli(*args: str, cwd=None) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    clock = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "segflow.flows.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    return done, time.perf_counter() - clock


@pytest.mark.parametrize("args, message", [
    (["segment", "{tmp}/missing.tif", "--out", "{tmp}/out"],
     "{tmp}/missing.tif: no such file or folder"),
    (["segment", "{rgb}", "--out", "{tmp}/out", "--set", "tiling.chunkk=3"],
     "config: invalid config: tiling.chunkk: Extra inputs are not permitted"),
    (["segment", "{rgb}", "--out", "{tmp}/out", "--set", "model.kind=torchscript", "--set",
      "model.weights={tmp}/none.pt"], "{tmp}/none.pt: no such file (model.weights)"),
    (["evaluate", "{rgb}", "--truth", "{tmp}/truth.tif", "--out", "{tmp}/out"],
     "{tmp}/truth.tif: no such ground-truth file"),
    (["batch", "{tmp}/nothing", "--out", "{tmp}/out"], "{tmp}/nothing: no such file or folder"),
])
def test_a_bad_path_or_key_fails_in_a_second_before_anything_starts(args, message, tmp_path,
                                                                    rgb_tif):
    filled = [a.format(tmp=tmp_path, rgb=rgb_tif) for a in args]
    done, seconds = _cli(*filled)
    assert done.returncode == 1
    line = f"segflow: error: {message.format(tmp=tmp_path)}"
    assert done.stderr.strip() == line
    # no mask, no Prefect API or cluster; one image's missing file is its failed runs row
    assert not (tmp_path / "out" / "masks").exists()
    if args[0] in ("segment", "evaluate") and "invalid config" not in message:
        [row] = run_query(str(tmp_path / "out"), "select status, error from runs").to_pylist()
        assert row == {"status": "failed", "error": line.removeprefix("segflow: error: ")}
    else:
        assert not (tmp_path / "out").exists()
    # the interpreter's start plus the config module: no Prefect, Dask or reader imported
    assert seconds < 5, seconds


@pytest.mark.parametrize("name, reason", [
    ("scenes", "a folder, not an image (segflow batch takes folders)"),
    ("notes.tif", "not a readable raster (not a TIFF: wrong magic bytes)"),
])
def test_a_path_that_is_no_image_fails_before_anything_starts(name, reason, tmp_path):
    """Its header is opened before Prefect or Dask start: the reason in one line, and the
    image's failed runs row."""
    path = tmp_path / name
    if name.endswith(".tif"):
        path.write_text("meeting notes, renamed")
    else:
        path.mkdir()
    done, _ = _cli("segment", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"segflow: error: {path}: {reason}")
    assert not (tmp_path / "out" / "masks").exists()
    [row] = run_query(str(tmp_path / "out"), "select status, error from runs").to_pylist()
    assert row == {"status": "failed", "error": line.removeprefix("segflow: error: ")}


def test_help_is_plain_text_with_an_example_per_command(capsys):
    commands = _parser()._subparsers._group_actions[0].choices
    assert set(commands) == set(EXAMPLES)
    for name in commands:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert f"example:\n  {EXAMPLES[name]}" in text
        assert "``" not in text and "`" not in text  # no reStructuredText markup


def test_show_and_runs_read_back_a_real_run(rgb_tif, tmp_path, dask_address, capsys):
    root = tmp_path / "out"
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=256"])
    result = segment_image(str(rgb_tif), str(root), cfg.model_dump(mode="json"), dask_address)
    store = result["output_uri"]
    # no terminal here: the progress is a plain line per tenth of the image, with its rate
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith(f"{result['image_id']}: ")]
    assert 2 <= len(lines) <= 11 and lines[-1].startswith(f"{result['image_id']}: 100% (")
    assert re.search(r"\(12/12 chunks\), \d+\.\d\d Mpx/s$", lines[-1]), lines

    assert main(["show", store]) == 0
    shown = capsys.readouterr().out
    assert f"source:      {rgb_tif}" in shown and result["source_checksum"] in shown
    assert "state:       complete" in shown and result["model"] in shown
    assert "background" in shown and "foreground" in shown and "#" in shown
    assert f"quick look: {store.removesuffix('.zarr')}.png" in shown

    assert main(["runs", "--out", str(root), "--last", "5"]) == 0
    listed = capsys.readouterr().out
    assert "succeeded" in listed and "1 latest run(s)" in listed

    # a store a killed run left behind: not complete, and how much is left
    group = zarr.open_group(store, mode="r+")
    group.attrs["segflow"] = {**group.attrs["segflow"], "complete": False}
    progress = group["progress"]
    flags = progress[:]
    flags.flat[:2] = 0
    progress[:] = flags
    assert main(["show", str(root)]) == 0
    assert f"incomplete: 2 of {flags.size} chunks left" in capsys.readouterr().out

    assert main(["show", str(tmp_path)]) == 1
    assert "no mask stores here" in capsys.readouterr().err
