"""Why is a Dask worker's forward slower than the bare model? A diagnostic (not in run_all).

Forwards the throughput model over ``--tiles`` tiles of (tile+10)^2 (default 1034x1034: a 1024
tile plus a 10-pixel halo on one side, like segflow's), ``--batch`` per call, in a fresh process
per configuration:

  seq2   one Python thread, torch.set_num_threads(2)            (the bare baseline)
  par1   two Python threads, torch.set_num_threads(1) each     (segflow's LocalCluster worker
                                                                  on 2 cores: 2 Dask threads)

under several malloc environments: glibc defaults; ``MALLOC_TRIM_THRESHOLD_=65536`` (what a
Dask nanny sets in its workers); glibc's transparent-huge-page tunable; and a heap that keeps
freed memory (no mmap, one arena). Prints seconds per tile (wall / tiles) and the CPU time split
user/sys: on this VM most of a conv forward's default cost is page faults (sys) from torch's
large activations being mmap'd and unmapped on every layer.

    .venv/bin/python benchmarks/probe_threads.py [--tiles 4] [--rounds 2] [--tile 1024] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PYTHON, model_file, save_results, wait_for_quiet  # noqa: E402

ENVS = {
    "glibc default": {},
    "Dask worker (MALLOC_TRIM_THRESHOLD_=65536)": {"MALLOC_TRIM_THRESHOLD_": "65536"},
    "GLIBC_TUNABLES=glibc.malloc.hugetlb=1": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "heap keeps memory (MMAP_MAX_=0, ARENA_MAX=1, TRIM=1e11)": {
        "MALLOC_MMAP_MAX_": "0", "MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "100000000000"},
}

CHILD = r"""
import json, os, sys, threading, time
import torch
mode, tiles, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3]
side, batch = int(sys.argv[4]), int(sys.argv[5])
m = torch.jit.load(weights).eval()
x = torch.rand(batch, 3, side, side)
def fwd():
    with torch.inference_mode():
        return m(x).argmax(1)
if mode == "seq2":
    torch.set_num_threads(2)
    fwd(); fwd()
    c0 = os.times(); t = time.perf_counter()
    for _ in range(tiles):
        fwd()
else:
    torch.set_num_threads(1)
    fwd(); fwd()
    c0 = os.times(); t = time.perf_counter()
    ths = [threading.Thread(target=lambda: [fwd() for _ in range(tiles // 2)]) for _ in range(2)]
    [a.start() for a in ths]; [a.join() for a in ths]
wall = time.perf_counter() - t
c1 = os.times()
print(json.dumps({"s_per_tile": wall / tiles, "user_s": c1.user - c0.user,
                  "sys_s": c1.system - c0.system, "wall_s": wall}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tile", type=int, default=1024, help="tile side; 10 px of halo is added")
    ap.add_argument("--batch", type=int, default=1, help="tiles per forward call")
    ap.add_argument("--envs", nargs="+", type=int, help="indexes into the env list (default all)")
    ap.add_argument("--wait-quiet", type=float, default=180.0)
    args = ap.parse_args()
    weights = str(model_file())
    rows = []
    for rnd in range(args.rounds):
        for i, (env_name, extra) in enumerate(ENVS.items()):
            if args.envs and i not in args.envs:
                continue
            for mode in ("seq2", "par1"):
                wait_for_quiet(args.wait_quiet)
                env = {**os.environ, **extra}
                proc = subprocess.run([PYTHON, "-c", CHILD, mode, str(args.tiles // args.batch),
                                       weights, str(args.tile + 10), str(args.batch)],
                                      capture_output=True, text=True, env=env, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["s_per_tile"] /= args.batch
                r.update(round=rnd, env=env_name, mode=mode)
                rows.append(r)
                print(f"round {rnd}  {mode}  {env_name:58s} {r['s_per_tile']:5.2f} s/tile  "
                      f"user {r['user_s']:5.1f}  sys {r['sys_s']:5.1f}", flush=True)
    print(f"\nmedian s/tile ({args.tile + 10}x{args.tile + 10}, batch {args.batch}):")
    for env_name in ENVS:
        if not any(r["env"] == env_name for r in rows):
            continue
        cells = []
        for mode in ("seq2", "par1"):
            v = sorted(r["s_per_tile"] for r in rows if r["env"] == env_name and r["mode"] == mode)
            cells.append(f"{mode} {v[len(v) // 2]:.2f}")
        print(f"  {env_name:58s} {'   '.join(cells)}")
    save_results(f"probe_threads_t{args.tile}_b{args.batch}",
                 {"tiles": args.tiles, "tile": args.tile, "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
