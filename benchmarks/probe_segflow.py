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

from _common import OUT, fresh_dir, model_file, receptive_field, write_synthetic_geotiff  # noqa: E402

PROCESS_T0 = psutil.Process().create_time()


def timed_segment_chunk(chunk, raster, model, store, skip_empty):
    """``tasks.infer.segment_chunk`` with timings; pickled by value onto the worker."""
    import os as _os
    import threading as _threading
    import time as _time

    entry = _time.time()
    import numpy as _np

    from tasks.infer import ChunkResult

    patched = None
    try:
        import torch as _torch

        import tasks.models.torchscript as _ts

        with _ts._LOCK:  # install once per worker process (threads race here)
            if not hasattr(_ts, "_bench_acc"):  # install once per worker process
                _ts._bench_acc = _threading.local()
                original = _ts.predict_tiled

                def predict_tiled(forward, block, core, tile, halo, batch):
                    acc = _ts._bench_acc

                    def timed_forward(x):
                        t = _time.perf_counter()
                        try:
                            return forward(x)
                        finally:
                            acc.forward_s += _time.perf_counter() - t
                            acc.tiles += x.shape[0]
                    return original(timed_forward, block, core, tile, halo, batch)

                _ts.predict_tiled = predict_tiled
        _ts._bench_acc.forward_s = 0.0
        _ts._bench_acc.tiles = 0
        acc = _ts._bench_acc
        patched = _torch.get_num_threads
    except ImportError:
        acc = None

    t0 = _time.time()
    pixels, valid = raster.read(chunk.read)
    t1 = _time.time()
    core_valid = valid[chunk.crop]
    skipped = skip_empty and not core_valid.any()
    if skipped:
        store.write_chunk(chunk, _np.empty(0, store.dtype), skipped=True)
        t2 = t3 = _time.time()
    else:
        labels = model.predict(pixels, valid, chunk.crop).astype(store.dtype, copy=False)
        labels[~core_valid] = store.nodata
        t2 = _time.time()
        store.write_chunk(chunk, labels)
        t3 = _time.time()
    record = {"chunk": list(chunk.index), "read_shape": list(chunk.read_shape),
              "thread": _threading.get_ident(), "pid": _os.getpid(),
              "entry": entry, "start": t0, "read_s": t1 - t0, "predict_s": t2 - t1, "write_s": t3 - t2,
              "forward_s": acc.forward_s if acc else 0.0, "tiles": acc.tiles if acc else 0,
              "torch_threads": patched() if patched else None,
              "MALLOC_TRIM_THRESHOLD_": _os.environ.get("MALLOC_TRIM_THRESHOLD_"),
              "OMP_NUM_THREADS": _os.environ.get("OMP_NUM_THREADS"), "end": t3}
    with open(_os.environ["SEGFLOW_BENCH_PROBE_LOG"], "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return ChunkResult(chunk.index, skipped=skipped)


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
        config = OUT / "configs" / f"probe_h{rf}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(f"model: {{kind: torchscript, weights: {model_file()}, "
                          f"params: {{receptive_field: {rf}}}}}\n"
                          f"tiling: {{chunk: 2048, tile: 1024, halo: {rf}, batch: 1}}\n")
    out = fresh_dir(OUT / "runs" / "probe", image.stem)
    log = out.with_suffix(".chunks.jsonl")
    os.environ["SEGFLOW_BENCH_PROBE_LOG"] = str(log)  # inherited by the spawned workers
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    t_imp0 = time.perf_counter()
    import flows.segment as fs
    from tasks.config import load_config
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
    fs.segment_chunk = timed_segment_chunk

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
    print(f"import flows.segment: {t_imp1 - t_imp0:.2f} s")
    print("timeline, seconds from segment_image() call:")
    print(f"  flow run start (Prefect)      {fr.start_time.timestamp() - base:7.2f}")
    for tr in sorted(trs, key=lambda t: t.start_time or fr.start_time):
        if tr.start_time and tr.end_time:
            print(f"  task {tr.name:26s}{tr.start_time.timestamp() - base:7.2f} -> "
                  f"{tr.end_time.timestamp() - base:7.2f}  ({(tr.end_time - tr.start_time).total_seconds():.2f} s)")
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
                  f"entry {c['entry'] - base:6.2f}, {c['start'] - base:6.2f} -> {c['end'] - base:6.2f}  read {c['read_s']:.2f}  "
                  f"predict {c['predict_s']:.2f} (forward {c['forward_s']:.2f}, {c['tiles']} tiles)  "
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
