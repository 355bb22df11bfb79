"""``segflow demo`` runs the main job on the bundled real scene, with no servers to start."""

from __future__ import annotations

import zarr

from flows.cli import main
from tasks.query import run_query


def test_demo_segments_the_bundled_scene(tmp_path, capsys):
    root = tmp_path / "demo"
    assert main(["demo", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert "mask:" in out and "cluster_1" in out and "ha" in out

    runs = run_query(str(root), "select status, chunks_total, output_uri from runs").to_pylist()
    assert [r["status"] for r in runs] == ["succeeded"]
    mask = zarr.open_array(runs[0]["output_uri"], path="0", mode="r")[:]
    stats = run_query(str(root), "select class_id, pixels, area from class_stats "
                      "order by class_id").to_pylist()
    assert len(stats) == 5
    for row in stats:  # 28.5 m pixels, hectares
        assert row["pixels"] == int((mask == row["class_id"]).sum()) > 0
        assert abs(row["area"] - row["pixels"] * 28.5 * 28.5 / 1e4) < 1e-6
