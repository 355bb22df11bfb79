"""Run the benchmarks one after another and print a summary of their figures.

    .venv/bin/python benchmarks/run_all.py

Each benchmark runs as its own process (fresh interpreter, its own memory) and leaves its full
figures in benchmarks/out/results/<name>.json; the summary below is read from those files.
Takes about 30-35 minutes on 2 CPU cores (longer if the machine is busy: some parts first wait
for other processes to go quiet). The optional extras are not run here:

    .venv/bin/python benchmarks/bench_throughput.py --tile-sweep   # tile size / malloc (~4 min)
    .venv/bin/python benchmarks/bench_memory.py --torchscript      # deep model memory (~9 min)
    .venv/bin/python benchmarks/probe_segflow.py                   # where a run's time goes
    .venv/bin/python benchmarks/probe_threads.py                   # torch threads x malloc
    .venv/bin/python benchmarks/bench_slide_volume.py              # slides and volumes (§4)
    .venv/bin/python benchmarks/bench_scaling.py                   # 1 vs 2 workers (~5 min, §5)
    python benchmarks/bench_gpu.py --size 8192                     # on a GPU host (§6)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import GIB, PYTHON, REPO, RESULTS, machine  # noqa: E402

#: the current headline figures first (BENCHMARKS.md's first section), then §1-§3
BENCHMARKS = ["bench_per_image.py", "bench_memory.py", "bench_scaleout.py", "bench_fixed_cost.py",
              "bench_throughput.py"]


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def summary() -> None:
    m = machine()
    print(f"\n=== summary ({m['cpu']}, {m['logical_cores']} cores, {m['memory_gib']} GiB, "
          f"{m['gpu']}) ===")
    fc = load("fixed_cost")
    if fc:
        c = fc["components"]
        print("fixed cost of one CLI run (64x64, otsu), median wall:")
        print(f"  temporary Prefect server  {fc['cli_temporary_server']['median_wall_s']:6.1f} s")
        print(f"  running Prefect server    {fc['cli_running_server']['median_wall_s']:6.1f} s")
        imported = c["import segflow.flows.segment"]["median_wall_s"]
        print(f"  import segflow.flows.segment {imported:6.1f} s;"
              f" empty flow process (temporary server) "
              f"{c['empty flow process (temporary server)']['median_wall_s']:.1f} s; "
              f"LocalCluster process {c['LocalCluster process']['median_wall_s']:.1f} s")
    tp = load("throughput")
    if tp:
        print(f"throughput, {tp['size']}x{tp['size']}x3, TorchScript model "
              f"(receptive field {tp['receptive_field']} px):")
        for v in tp["variants"]:
            line = (f"  [{v['allocator']}] segflow {v['segflow_wall_s']:.1f} s wall "
                    f"(fixed {v['segflow_fixed_wall_s']:.1f} s), bare {v['bare']['seconds']:.1f} s")
            if v.get("monai"):
                line += f", MONAI {v['monai']['seconds']:.1f} s"
            print(line)
            print("     " + ", ".join(f"{k} {r:.2f}x" for k, r in v["ratios"].items()))
    pi = load("per_image")
    if pi and all(k in pi for k in "ABCD"):
        a, b, c, d = pi["A"], pi["B"], pi["C"], pi["D"]
        print(f"per image ({pi['size']}² scene, batch of {pi['batch']}):")
        print(f"  A segflow {a['segflow_s']:.1f} s, bare {a['bare_default_malloc']['seconds']:.1f}"
              f" s (worker malloc {a['bare_worker_malloc']['seconds']:.1f} s)"
              + (f", MONAI {a['monai']['seconds']:.1f} s" if "monai" in a else ""))
        print(f"  B fixed cost cold {sorted(b['cold_s'])[1]:.1f} s, warm "
              f"{sorted(b['warm_s'])[1]:.2f} s")
        print(f"  C batch warm {c['warm_s']:.1f} s, cold {c['cold_s']:.1f} s")
        print(f"  D slide segment stage {d['skip']:.1f} s skipping, {d['no_skip']:.1f} s not")
    so = load("scaleout")
    if so:
        print(f"scale-out: {so['gigapixels']:g} Gpx on {so['workers']} simulated GPU workers: "
              f"projected {so['projected_s']:.1f} s (ideal {so['ideal_s']:.1f} s)")
    mem = load("memory")
    if mem:
        print("memory, peak RSS of the whole process tree (otsu):")
        for r in mem["runs"]:
            print(f"  {r['model']:11s} {r['size']:>5}^2  {r['peak_rss'] / GIB:5.2f} GiB")
        if "otsu_ratio" in mem:
            print(f"  12000^2 / 6000^2 = {mem['otsu_ratio']:.2f}x (target <= 1.3x, < 3 GiB)")


def main() -> None:
    started = time.perf_counter()
    for script in BENCHMARKS:
        print(f"\n=== {script} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([PYTHON, str(REPO / "benchmarks" / script)], cwd=REPO).returncode
        print(f"=== {script}: exit {rc}, {time.perf_counter() - t0:.0f} s ===", flush=True)
        if rc != 0:
            sys.exit(rc)
    summary()
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:] == ["--summary"]:
        summary()
    else:
        main()
