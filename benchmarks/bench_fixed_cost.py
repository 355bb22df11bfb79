"""Fixed cost of one ``segflow segment`` invocation, and how much of it is Prefect/Dask vs segflow.

On a 64x64 3-band GeoTIFF with model kind ``otsu`` (one chunk, nothing to compute):

  1. the CLI with no PREFECT_API_URL: Prefect starts a temporary server in a subprocess;
  2. the CLI against a running ``prefect server start`` on 127.0.0.1:4299 (started here with
     PREFECT_HOME under benchmarks/out, stopped afterwards);
  3. components, each in a fresh process: the interpreter alone; ``import prefect``,
     ``import distributed``, ``import torch``, ``import segflow.flows.segment``; a Dask LocalCluster
     (1 worker x 2 threads, processes, as segflow sizes it here) start + first task + close; an
     empty Prefect flow with and without the temporary server;
  4. a timeline of one in-process run (benchmarks/probe_segflow.py): where the seconds go.

    .venv/bin/python benchmarks/bench_fixed_cost.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    OUT,
    PYTHON,
    REPO,
    fresh_dir,
    measured,
    run_segflow,
    save_results,
    write_synthetic_geotiff,
)

PORT = 4299
API = f"http://127.0.0.1:{PORT}/api"

LOCALCLUSTER = """
import json, logging, time
t0 = time.perf_counter()
from distributed import Client, LocalCluster
t1 = time.perf_counter()
cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                       dashboard_address=None, silence_logs=logging.CRITICAL)
t2 = time.perf_counter()
with Client(cluster.scheduler_address, set_as_default=False) as c:
    c.submit(sum, [1, 2]).result()
t3 = time.perf_counter()
cluster.close()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "start_s": t2 - t1, "client_first_task_s": t3 - t2,
                  "close_s": t4 - t3}))
"""

EMPTY_FLOW = """
import json, time
t0 = time.perf_counter()
from prefect import flow, task
t1 = time.perf_counter()

@task
def noop(i):
    return i

@flow
def empty():
    return 1

@flow
def four_tasks():
    return [noop(i) for i in range(4)]

a = time.perf_counter(); empty(); b = time.perf_counter()
empty(); c = time.perf_counter()
four_tasks(); d = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_flow_s": b - a, "second_flow_s": c - b,
                  "flow_with_4_tasks_s": d - c}), flush=True)
"""


def quiet_env(extra: dict[str, str] | None = None, api: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    if api:
        env["PREFECT_API_URL"] = api
    env.update(extra or {})
    return env


def timed_process(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Wall time of a fresh process from spawn to exit, plus its JSON last line if any."""
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env or quiet_env(), cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    out: dict = {"process_wall_s": wall}
    lines = proc.stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        out.update(json.loads(lines[-1]))
    return out


def median_of(n: int, fn) -> tuple[float, list]:
    runs = [fn() for _ in range(n)]
    return statistics.median(r["process_wall_s"] if "process_wall_s" in r else r["wall_s"]
                             for r in runs), runs


def start_server(home: Path) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    env = quiet_env({"PREFECT_HOME": str(home)})
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(Path(PYTHON).parent / "prefect"), "server", "start",
                             "--host", "127.0.0.1", "--port", str(PORT)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: see {home / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{API}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("prefect server did not become healthy in 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGINT)  # its own session: the server and its children
        proc.wait(timeout=30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wait-quiet", type=float, default=180.0,
                    help="wait up to this many seconds for an idle machine before each part")
    args = ap.parse_args()
    started = time.perf_counter()
    n = args.repeat
    tiny = write_synthetic_geotiff(OUT / "data" / "synthetic_64.tif", 64)
    runs_dir = OUT / "runs" / "fixed_cost"
    res: dict = {"image": str(tiny), "repeat": n, "load": {}}

    def section(name: str, fn):
        return measured(name, fn, res["load"], args.wait_quiet)

    # 1. CLI, temporary Prefect server
    def cli_temp():
        return run_segflow(tiny, fresh_dir(runs_dir, "temp"), sets=["model.kind=otsu"])

    med, runs = section("cli_temporary_server", lambda: median_of(n, cli_temp))
    res["cli_temporary_server"] = {"median_wall_s": med, "runs": runs}
    print(f"segflow CLI, temporary Prefect server: median {med:.1f} s wall "
          f"({', '.join('{:.1f}'.format(r['wall_s']) for r in runs)}); flow's own seconds "
          f"{statistics.median(r['run_seconds'] for r in runs):.1f}")

    # 2. CLI against a running server
    home = OUT / "prefect-home"
    t0 = time.perf_counter()
    server = start_server(home)
    res["server_start_s"] = time.perf_counter() - t0
    print(f"prefect server start → healthy: {res['server_start_s']:.1f} s (one-off)")
    try:
        def cli_server():
            return run_segflow(tiny, fresh_dir(runs_dir, "server"), sets=["model.kind=otsu"],
                               env={"PREFECT_API_URL": API})

        cli_server()  # first flow against a fresh database registers the flow: not counted
        med, runs = section("cli_running_server", lambda: median_of(n, cli_server))
        res["cli_running_server"] = {"median_wall_s": med, "runs": runs}
        print(f"segflow CLI, running Prefect server: median {med:.1f} s wall "
              f"({', '.join('{:.1f}'.format(r['wall_s']) for r in runs)}); flow's own seconds "
              f"{statistics.median(r['run_seconds'] for r in runs):.1f}")
        flow_server = section("empty_flow_running_server", lambda: median_of(
            n, lambda: timed_process([PYTHON, "-c", EMPTY_FLOW], quiet_env(api=API))))
        res["empty_flow_running_server"] = {"median_wall_s": flow_server[0],
                                            "runs": flow_server[1]}
    finally:
        stop_server(server)

    # 3. components in fresh processes
    comps = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "import prefect": [PYTHON, "-c", "import prefect"],
        "import distributed": [PYTHON, "-c", "import distributed"],
        "import torch": [PYTHON, "-c", "import torch"],
        "import segflow.flows.segment": [PYTHON, "-c", "import segflow.flows.segment"],
        "segflow --help": [str(Path(PYTHON).parent / "segflow"), "--help"],
    }
    res["components"] = {}
    for name, cmd in comps.items():
        med, runs = section(name, lambda cmd=cmd: median_of(n, lambda: timed_process(cmd)))
        res["components"][name] = {"median_wall_s": med, "runs": runs}
    med, runs = section("localcluster", lambda: median_of(
        n, lambda: timed_process([PYTHON, "-c", LOCALCLUSTER])))
    res["components"]["LocalCluster process"] = {"median_wall_s": med, "runs": runs}
    med, runs = section("empty_flow_temporary_server", lambda: median_of(
        n, lambda: timed_process([PYTHON, "-c", EMPTY_FLOW])))
    res["components"]["empty flow process (temporary server)"] = {"median_wall_s": med,
                                                                  "runs": runs}
    res["components"]["empty flow process (running server)"] = res.pop(
        "empty_flow_running_server")

    print("\ncomponents (fresh process each, median wall):")
    for name, c in res["components"].items():
        extra = ""
        r0 = c["runs"]
        if "start_s" in r0[0]:
            extra = (f"  [import {statistics.median(r['import_s'] for r in r0):.2f}, start "
                     f"{statistics.median(r['start_s'] for r in r0):.2f}, first task "
                     f"{statistics.median(r['client_first_task_s'] for r in r0):.2f}, close "
                     f"{statistics.median(r['close_s'] for r in r0):.2f}]")
        elif "first_flow_s" in r0[0]:
            extra = (f"  [import {statistics.median(r['import_s'] for r in r0):.2f}, first flow "
                     f"{statistics.median(r['first_flow_s'] for r in r0):.2f}, second flow "
                     f"{statistics.median(r['second_flow_s'] for r in r0):.2f}, flow + 4 tasks "
                     f"{statistics.median(r['flow_with_4_tasks_s'] for r in r0):.2f}]")
        print(f"  {name:40s} {c['median_wall_s']:6.2f} s{extra}")

    # 4. timeline of one in-process run
    probe_json = OUT / "results" / "fixed_cost_probe.json"
    probe_json.parent.mkdir(parents=True, exist_ok=True)
    timeline = section("probe", lambda: timed_process(
        [PYTHON, str(REPO / "benchmarks" / "probe_segflow.py"), str(tiny), "--set",
         "model.kind=otsu", "--json", str(probe_json)]))
    timeline.update(json.loads(probe_json.read_text()))
    res["timeline"] = timeline
    t = timeline
    tasks = t["tasks"]
    print("\none in-process run (probe_segflow.py, temporary server), seconds:")
    print(f"  process wall {t['process_wall_s']:.2f}: interpreter {t['interpreter_s']:.2f}, "
          f"import segflow.flows.segment {t['import_flows_segment_s']:.2f}, call → flow running "
          f"{t['flow_start_s']:.2f}, flow running → returned "
          f"{t['returned_s'] - t['flow_start_s']:.2f}")
    for name, (a, b) in sorted(tasks.items(), key=lambda kv: kv[1][0]):
        print(f"    task {name:14s} {a:6.2f} → {b:6.2f} ({b - a:.2f})")
    cl = t["cluster"]
    print(f"    LocalCluster start {cl['cluster_ready'] - cl['cluster_enter']:.2f}, "
          f"close {cl['cluster_closed'] - cl['cluster_close']:.2f}")

    res["benchmark_wall_s"] = time.perf_counter() - started
    path = save_results("fixed_cost", res)
    print(f"\nresults: {path}  (benchmark took {res['benchmark_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
