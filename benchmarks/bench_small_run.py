"""Where a small image's run goes, warm: one Prefect API (a temporary server, as the tests and
a cold CLI call start it) and one LocalCluster stay up while ``segment_image`` runs a 384²
Otsu scene (4 chunks) ``--runs`` times after one warm-up run; the figures are the medians of
each run's wall seconds and of the CPU seconds spent by this process (the flow), the Prefect
server and the Dask worker processes (psutil, over the process tree).

    .venv/bin/python benchmarks/bench_small_run.py [--runs 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import _role, save_results, write_synthetic_geotiff  # noqa: E402

SETTINGS = ["model.kind=otsu", "tiling.chunk=192"]


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process, the Prefect server and the Dask workers."""
    me = psutil.Process()
    found = {"flow": sum(me.cpu_times()[:2]), "prefect-server": 0.0, "dask-worker": 0.0}
    for child in me.children(recursive=True):
        try:
            role, seconds = _role(child), sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
        if role in found:
            found[role] += seconds
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()

    from distributed import LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    from segflow.flows.segment import segment_image
    from segflow.tasks.config import load_config

    folder = Path(tempfile.mkdtemp(prefix="segflow-small-"))
    scene = write_synthetic_geotiff(folder / "scene.tif", 384)
    cfg = load_config(overrides=SETTINGS).model_dump(mode="json")
    rows = []
    with prefect_test_harness(server_startup_timeout=120), \
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                         dashboard_address=":0") as cluster:
        for i in range(args.runs + 1):
            before, clock = cpu_seconds(), time.perf_counter()
            segment_image(str(scene), str(folder / f"out-{i}"), cfg, cluster.scheduler_address)
            wall, after = time.perf_counter() - clock, cpu_seconds()
            if i:  # the first run warms the worker and the API
                rows.append({"wall": wall, **{k: after[k] - before[k] for k in after}})
    medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    medians["cpu total"] = sum(v for k, v in medians.items() if k != "wall")
    for key, value in medians.items():
        print(f"{key:>15}: {value:.2f} s")
    save_results("small_run", {"runs": args.runs, "settings": SETTINGS, "median": medians})


if __name__ == "__main__":
    main()
