"""Where does a segflow run spend its time? A diagnostic, not a benchmark (not in run_all).

Runs ``flows.segment.segment_image`` in this (fresh) process, exactly as the CLI does, with
timing shims installed from the outside (no segflow file is changed):

- process start → imports → flow call → Prefect flow/task run start and end (read back from
  the Prefect API) → return;
- LocalCluster start and close (``flows.segment.dask_cluster`` wrapped);
- per chunk on the Dask worker: read, predict (and the model forward calls inside it), write,
  with wall-clock start/end so overlap between the worker's threads is visible, plus the
  worker's torch thread count and malloc environment.

    .venv/bin/python benchmarks/probe_segflow.py [IMAGE] [--config FILE] [--set k=v ...]

Defaults to the throughput benchmark's image and TorchScript config (run bench_throughput.py
first, or pass --size to generate the image).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

T_START = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
from _common import (  # noqa: E402
    OUT,
    fresh_dir,
    model_file,
    receptive_field,
    write_synthetic_geotiff,
    write_torchscript_config,
)

PROCESS_T0 = psutil.Process().create_time()


def timed_segment_lane(lane, *args, **kwargs):
    """``segflow.tasks.mask.chunk.segment_lane`` with timings, per lane of chunks; pickled by
    value onto the worker.

    Signature-agnostic: it calls the real function with whatever the flow passes, and times the
    reader's ``read``, the model's ``predict`` (and the forwards inside it, for TorchScript) and
    the store's ``write_chunk`` by wrapping those methods on their classes, once per worker.
    """
    import os as _os
    import threading as _threading
    import time as _time

    entry = _time.time()
    import segflow.tasks.mask.chunk as _infer

    lock = _infer.__dict__.setdefault("_bench_lock", _threading.Lock())
    acc = _infer.__dict__.setdefault("_bench_acc", _threading.local())
    acc.read_s = acc.predict_s = acc.write_s = acc.forward_s = 0.0
    acc.tiles = 0

    def timed(fn, field):
        def wrapper(*a, **k):
            t = _time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                setattr(acc, field, getattr(acc, field, 0.0) + _time.perf_counter() - t)
        wrapper._bench = True
        return wrapper

    objects = list(args) + list(kwargs.values())
    with lock:  # the worker's threads race here; wrap each class once
        for obj in objects:
            for method, field in (("read", "read_s"), ("predict", "predict_s"),
                                  ("write_chunk", "write_s")):
                fn = getattr(type(obj), method, None)
                if callable(fn) and not getattr(fn, "_bench", False):
                    setattr(type(obj), method, timed(fn, field))
        ts = __import__("sys").modules.get("segflow.tasks.models.torch_model")
        if ts is not None and not getattr(ts.predict_tiled, "_bench", False):
            original = ts.predict_tiled

            def predict_tiled(forward, *a, **k):
                def timed_forward(x):
                    t = _time.perf_counter()
                    try:
                        return forward(x)
                    finally:
                        acc.forward_s += _time.perf_counter() - t
                        acc.tiles += x.shape[0]
                return original(timed_forward, *a, **k)

            predict_tiled._bench = True
            ts.predict_tiled = predict_tiled
    t0 = _time.time()
    result = _infer.segment_lane(lane, *args, **kwargs)
    t3 = _time.time()
    torch = __import__("sys").modules.get("torch")  # never import it here: otsu runs lack it
    torch_threads = torch.get_num_threads() if torch is not None else None
    record = {"chunk": list(lane[0].index), "chunks": len(lane),
              "read_shape": list(lane[0].read_shape),
              "thread": _threading.get_ident(), "pid": _os.getpid(),
              "entry": entry, "start": t0, "read_s": acc.read_s, "predict_s": acc.predict_s,
              "write_s": acc.write_s, "forward_s": acc.forward_s, "tiles": acc.tiles,
              "torch_threads": torch_threads,
              "MALLOC_TRIM_THRESHOLD_": _os.environ.get("MALLOC_TRIM_THRESHOLD_"),
              "MALLOC_MMAP_THRESHOLD_": _os.environ.get("MALLOC_MMAP_THRESHOLD_"),
              "OMP_NUM_THREADS": _os.environ.get("OMP_NUM_THREADS"), "end": t3}
    with open(_os.environ["SEGFLOW_BENCH_PROBE_LOG"], "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", nargs="?")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--json", help="also write the timeline as JSON to this file")
    args = ap.parse_args()

    image = Path(args.image) if args.image else write_synthetic_geotiff(
        OUT / "data" / f"synthetic_{args.size}.tif", args.size)
    config = args.config
    if config is None:
        rf = receptive_field()
        config = write_torchscript_config(OUT / "configs" / f"probe_h{rf}.yaml", model_file(), rf)
    out = fresh_dir(OUT / "runs" / "probe", image.stem)
    log = out.with_suffix(".chunks.jsonl")
    os.environ["SEGFLOW_BENCH_PROBE_LOG"] = str(log)  # inherited by the spawned workers
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    t_imp0 = time.perf_counter()
    import segflow.flows.segment as fs
    from segflow.tasks.config import load_config
    t_imp1 = time.perf_counter()

    marks: dict[str, float] = {}
    original_cluster = fs.dask_cluster

    @contextlib.contextmanager
    def timed_cluster(cfg, address=None):
        marks["cluster_enter"] = time.time()
        with original_cluster(cfg, address) as addr:
            marks["cluster_ready"] = time.time()
            yield addr
            marks["cluster_close"] = time.time()
        marks["cluster_closed"] = time.time()

    fs.dask_cluster = timed_cluster
    import segflow.tasks.mask.run as mask_run
    mask_run.segment_lane = timed_segment_lane

    cfg = load_config(str(config), args.set)
    t_call = time.time()
    result = fs.segment_image(str(image), str(out), cfg.model_dump(mode="json"), None)
    t_ret = time.time()

    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def runs():
        async with get_client() as client:
            fr = await client.read_flow_run(result["run_id"])
            trs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)
            return fr, trs

    fr, trs = asyncio.run(runs())
    base = t_call
    print(f"image {image.name}; config {config}")
    print(f"process start -> script body: {T_START - PROCESS_T0:.2f} s (interpreter + site)")
    print(f"import segflow.flows.segment: {t_imp1 - t_imp0:.2f} s")
    print("timeline, seconds from segment_image() call:")
    print(f"  flow run start (Prefect)      {fr.start_time.timestamp() - base:7.2f}")
    for tr in sorted(trs, key=lambda t: t.start_time or fr.start_time):
        if tr.start_time and tr.end_time:
            took = (tr.end_time - tr.start_time).total_seconds()
            print(f"  task {tr.name:26s}{tr.start_time.timestamp() - base:7.2f} -> "
                  f"{tr.end_time.timestamp() - base:7.2f}  ({took:.2f} s)")
    for k in ("cluster_enter", "cluster_ready", "cluster_close", "cluster_closed"):
        if k in marks:
            print(f"  {k:30s}{marks[k] - base:7.2f}")
    print(f"  flow run end (Prefect)        {fr.end_time.timestamp() - base:7.2f}")
    print(f"  segment_image() returned      {t_ret - base:7.2f}   (run row seconds "
          f"{result['seconds']:.2f})")
    chunks = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if chunks:
        print("chunks on the worker (seconds from call):")
        for c in sorted(chunks, key=lambda c: c["start"]):
            print(f"  {tuple(c['chunk'])} {c['read_shape']} thread {c['thread'] % 10000:04d}: "
                  f"entry {c['entry'] - base:6.2f}, {c['start'] - base:6.2f} -> "
                  f"{c['end'] - base:6.2f}  read {c['read_s']:.2f}  predict {c['predict_s']:.2f} "
                  f"(forward {c['forward_s']:.2f}, {c['tiles']} tiles)  "
                  f"write {c['write_s']:.2f}  torch threads {c['torch_threads']}  "
                  f"MALLOC_TRIM_THRESHOLD_={c['MALLOC_TRIM_THRESHOLD_']}")
        busy = sum(c["end"] - c["start"] for c in chunks)
        span = max(c["end"] for c in chunks) - min(c["start"] for c in chunks)
        fwd = sum(c["forward_s"] for c in chunks)
        print(f"  chunk span {span:.2f} s; chunk-seconds {busy:.2f} (forward {fwd:.2f}); "
              f"mean concurrency {busy / span:.2f}")
    ru = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF)
    print(f"probe process CPU: user {ru.ru_utime:.1f} s, sys {ru.ru_stime:.1f} s")
    if args.json:
        tasks = {tr.name.rsplit("-", 1)[0]: [tr.start_time.timestamp() - base,
                                             tr.end_time.timestamp() - base]
                 for tr in trs if tr.start_time and tr.end_time}
        Path(args.json).write_text(json.dumps({
            "image": str(image), "config": str(config), "set": args.set,
            "interpreter_s": T_START - PROCESS_T0, "import_flows_segment_s": t_imp1 - t_imp0,
            "flow_start_s": fr.start_time.timestamp() - base,
            "flow_end_s": fr.end_time.timestamp() - base, "returned_s": t_ret - base,
            "run_seconds": result["seconds"], "tasks": tasks,
            "cluster": {k: v - base for k, v in marks.items()},
            "chunks": [{**c, "entry": c["entry"] - base, "start": c["start"] - base,
                        "end": c["end"] - base} for c in chunks],
            "cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime}, indent=1))


if __name__ == "__main__":
    main()
