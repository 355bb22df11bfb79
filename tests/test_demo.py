"""``segflow demo`` runs the main job on the bundled real scene, with no servers to start:
k-means land cover, then the bundled U-Net scored against the scene's land-cover map."""

from __future__ import annotations

import json
from pathlib import Path

import zarr

from segflow.flows.cli import main
from segflow.tasks.catalog.query import run_query

SAMPLES = Path(__file__).parents[1] / "samples"


def test_demo_segments_the_bundled_scene(tmp_path, capsys):
    root = tmp_path / "demo"
    assert main(["demo", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert "mask:" in out and "cluster_1" in out and "ha" in out and "iou" in out

    for where, kind in ((root, "kmeans"), (root / "unet", "unet")):
        [run] = run_query(str(where), "select status, model, output_uri from runs").to_pylist()
        assert run["status"] == "succeeded" and run["model"].startswith(kind)
        mask = zarr.open_array(run["output_uri"], path="0", mode="r")[:]
        stats = run_query(str(where), "select class_id, pixels, area from class_stats"
                          ).to_pylist()
        for row in stats:  # 28.5 m pixels, hectares
            assert row["pixels"] == int((mask == row["class_id"]).sum())
            assert abs(row["area"] - row["pixels"] * 28.5 * 28.5 / 1e4) < 1e-6
        assert sum(r["pixels"] > 0 for r in stats) >= 3  # non-trivial masks

    # the deep path is scored against the land-cover map: whole-scene figures in the catalog,
    # consistent with the hold-out scores the training script recorded
    [scores] = run_query(str(root / "unet"), "select sum(tp) as tp, sum(fp) as fp from metrics"
                         ).to_pylist()
    accuracy = scores["tp"] / (scores["tp"] + scores["fp"])
    trained = json.loads((SAMPLES / "landcover_unet.json").read_text())
    assert accuracy > trained["holdout"]["pixel_accuracy"] - 0.05
