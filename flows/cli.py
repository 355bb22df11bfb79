"""The segflow command line: segment, evaluate, batch, watch, change, query, show, runs,
serve, server, demo.

User mistakes and bad files end in one line on stderr, ``segflow: error: <source>: <reason>``,
and a non-zero status; a missing or unreadable local file and a bad config key end so before
Prefect or Dask start (``_check_inputs``). Prefect's own console logging is kept quiet unless
``-v`` is given (the logs still reach the Prefect API/UI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from segflow import configs, samples
from segflow.flows.runner import Runner

# package data: found beside the code in a repository checkout and in an installed wheel alike
DEMO_SOURCE = samples.FOLDER / "nc_lsat7_2000_b12345.tif"
DEMO_CONFIG = configs.FOLDER / "landcover.yaml"
DEMO_DEEP_CONFIG = configs.FOLDER / "landcover_unet.yaml"
DEMO_TRUTH = samples.FOLDER / "nc_landclass96.tif"
DEPLOYMENTS = configs.FOLDER / "deployments.yaml"


def _job_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that runs the segmentation job."""
    p.add_argument("--out", required=True, help="output root (local path or URL)")
    p.add_argument("--config", help="YAML job config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. tiling.chunk=1024 (repeatable)")
    p.add_argument("--scheduler", help="tcp://host:port of a running Dask scheduler")
    p.add_argument("--wait", type=float, metavar="SECONDS",
                   help="wait this long for another run writing the same mask (default 30, "
                        "config output.wait)")


def _batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, default=2, metavar="N",
                   help="images segmented at a time (default 2), on one shared Dask cluster")


DESCRIPTION = """\
Segment images too big for one model call, chunk by chunk, into Zarr masks and a
catalog of statistics (Prefect flows on a Dask cluster; no servers needed).

example:
  segflow demo
  segflow segment scene.tif --config configs/landcover.yaml --out results
  segflow <command> --help      (each command's options and an example)"""

#: one example per command, shown at the foot of its --help
EXAMPLES = {
    "segment": "segflow segment scene.tif --config configs/landcover.yaml --out results "
               "--set tiling.chunk=1024",
    "evaluate": "segflow evaluate scene.tif --truth landcover_map.tif "
                "--config configs/landcover_unet.yaml --out results",
    "batch": "segflow batch s3://bucket/scenes/ --config configs/landcover.yaml "
             "--out s3://bucket/results --concurrency 4",
    "watch": "segflow watch incoming/ --config configs/landcover.yaml --out results "
             "--interval 30",
    "change": "segflow change results/masks/a-1a2b3c4d.zarr results/masks/b-5e6f7a8b.zarr "
              "--out results",
    "query": "segflow query \"select class_name, sum(area) from class_stats group by all\" "
             "--out results",
    "show": "segflow show results/masks/scene-1a2b3c4d.zarr",
    "runs": "segflow runs --out results --last 10",
    "serve": "segflow serve --config configs/deployments.yaml",
    "server": "segflow server start",
    "demo": "segflow demo --out segflow-demo",
}


def _command(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with its example (plain text, as typed)."""
    return sub.add_parser(name, help=text, description=text, epilog=f"example:\n  {EXAMPLES[name]}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segflow", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    seg = _command(sub, "segment", "segment one image into ROOT")
    seg.add_argument("source", help="local path or fsspec URL of the image")
    _job_options(seg)

    ev = _command(sub, "evaluate", "segment (or reuse the mask of) one image and score it "
                                         "against a ground-truth label image")
    ev.add_argument("source", help="local path or fsspec URL of the image")
    ev.add_argument("--truth", required=True, help="label image on the same grid (class ids)")
    _job_options(ev)

    batch = _command(sub, "batch", "segment every image under a prefix or in a manifest "
                                         "(skipping those already done)")
    batch.add_argument("source", help="folder, fsspec prefix (s3://bucket/dir/), a .csv/.txt "
                                      "manifest of URIs, a STAC ItemCollection (.json) or a "
                                      "STAC API search URL (https://host/search?...)")
    _job_options(batch)
    _batch_options(batch)

    watch = _command(sub, "watch", "segment new or changed images as they arrive, by "
                                         "listing a prefix or from S3 notifications on SQS")
    watch.add_argument("source", nargs="?", metavar="PREFIX",
                       help="folder, fsspec prefix, or a STAC API search URL")
    watch.add_argument("--queue", metavar="SQS_URL",
                       help="consume S3 ObjectCreated notifications from this SQS queue")
    watch.add_argument("--interval", type=float, default=60.0,
                       help="seconds between listings of PREFIX (default 60)")
    watch.add_argument("--once", action="store_true",
                       help="one pass (or drain the queue), then exit with the batch's status")
    watch.add_argument("--emit-events", action="store_true",
                       help="emit a segflow.object.created Prefect event per new or changed "
                            "image instead of segmenting (a deployment trigger runs them)")
    _job_options(watch)
    _batch_options(watch)

    change = _command(sub, "change", "from-to change between two masks of one grid: the "
                                           "change table and a change mask in ROOT")
    change.add_argument("a", metavar="MASK_OR_RUN_A", help="mask store (masks/<id>.zarr) or a "
                                                          "run id in ROOT's catalog")
    change.add_argument("b", metavar="MASK_OR_RUN_B", help="the later mask, likewise")
    change.add_argument("--out", required=True, help="output root (its catalog names run ids)")
    change.add_argument("--scheduler", help="tcp://host:port of a running Dask scheduler")

    q = _command(sub, "query", "run SQL over the catalog under ROOT")
    q.add_argument("sql")
    q.add_argument("--out", required=True, help="output root holding catalog/")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")

    show = _command(sub, "show", "what a mask store holds (source, checksum, model, config "
                                 "hash, classes, complete or chunks left, levels, outputs); "
                                 "for a root, each of its stores")
    show.add_argument("path", metavar="STORE_OR_ROOT", help="masks/<id>.zarr, or an output root")

    runs = _command(sub, "runs", "the latest runs recorded under ROOT: status, image, seconds")
    runs.add_argument("--out", required=True, help="output root holding catalog/")
    runs.add_argument("--last", type=int, default=20, metavar="N", help="how many (default 20)")

    serve = _command(sub, "serve", "register the deployments (schedules, arrival trigger) "
                                         "with the Prefect server and run their flow runs")
    serve.add_argument("--config", default=str(DEPLOYMENTS),
                       help="deployments file (default configs/deployments.yaml)")

    srv = _command(sub, "server", "a warm local Prefect server + Dask cluster that later "
                                        "segflow calls use (no start-up cost per call)")
    srv.add_argument("action", choices=["start", "stop", "status", "run"],
                     help="run: the server itself, in the foreground")
    srv.add_argument("--idle-timeout", type=float, default=3600.0, metavar="S",
                     help="stop after S seconds without a request (default 3600)")
    srv.add_argument("--workers", type=int, help="Dask worker processes (default: as segment)")
    srv.add_argument("--threads", type=int, help="threads per worker (default: as segment)")

    demo = _command(sub, "demo", "segment the bundled sample scene, no servers needed")
    demo.add_argument("--out", default="segflow-demo", help="output root (default ./segflow-demo)")
    return p


def _process_defaults(verbose: bool) -> None:
    """Environment defaults for this process and the ones it starts (workers, the server).

    Prefect's console handler keeps warnings only (tracebacks stay in the Prefect API). GDAL's
    block cache (5 % of RAM by default) is capped: the client's decimated reads (the fit
    sample, the quick look) decode every block once, and an uncapped cache then holds up to
    1.2 GB of them on a 24 GB machine, growing with the image (BENCHMARKS.md §3).
    """
    os.environ.setdefault("GDAL_CACHEMAX", "128")  # MB
    # library warnings are log records, not stderr lines beside the one error line: this
    # process's go to Prefect's log (the run's log in the UI; the console with -v), and
    # worker processes drop theirs unless -v
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(logging.NullHandler())
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "py.warnings")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary API's first start in a new PREFECT_HOME creates its database: on a busy
    # 2-core machine that can take longer than Prefect's default 20 s wait
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not verbose:  # Prefect reads handler levels from PREFECT_LOGGING_<path> variables
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")


def _print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in rows[0] if rows else []:
        numeric = isinstance(rows[0][name], (int, float))
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(f"{v:,.4f}" if isinstance(v, float) else "" if v is None else str(v)
                        for v in row.values()))
    Console().print(table)


def _local(path: str | None) -> str | None:
    """A local path made absolute and resolved (the same file is the same catalog entry from
    any folder, and the warm server runs elsewhere); URLs as given."""
    return path if path is None or "://" in path else os.path.realpath(path)


#: config keys that name a file: a relative local path given with --set is relative to the CWD
SET_FILES = {"model.weights", "cluster.spec", "stats.zones", "stats.ground_truth",
             "stats.ground_truth_instances", "input.prompts"}


def _local_set(item: str) -> str:
    """``--set key=path`` with a file key's local path made absolute (the job may run in the
    warm server, elsewhere); anything else as given."""
    key, sep, value = item.partition("=")
    if sep and key.strip() in SET_FILES and value not in ("", "null", "~") and "://" not in value:
        return f"{key}={_local(value)}"
    return item


def _local_ref(ref: str) -> str:
    """A mask store path made absolute (as ``_local``); a run id as given."""
    return _local(ref) if os.path.exists(ref) else ref  # type: ignore[return-value]


def _segment(runner: Runner, source: str, out: str, config: str | None, overrides: list[str],
             scheduler: str | None) -> dict[str, Any]:
    return dict(runner.job("segment", {"source": _local(source), "out": _local(out),
                                       "config": _local(config), "overrides": overrides,
                                       "scheduler": scheduler}))


def _report(result: dict[str, Any]) -> None:
    print(f"mask:    {result['output_uri']}")
    print(f"catalog: {Path(result['output_uri']).parents[1] / 'catalog'}"
          if "://" not in result["output_uri"] else "")
    for uri in result.get("exports", []):  # what GIS, QuPath or ITK-SNAP users open
        print(f"export:  {uri}")
    print(f"chunks:  {result['chunks_total']} total, skipped: {result['chunks_nodata']} nodata, "
          f"{result['chunks_background']} no tissue; {result['chunks_computed']} computed this "
          f"run; {result['seconds']:.1f} s")
    if result.get("cells_masked") is not None:
        print(f"masked:  {result['cells_masked']:,} cells flagged by input.mask (nodata, left "
              "out of the fractions)")
    columns = ["class_id", "class_name", "pixels", "area", "area_unit", "fraction"]
    if result["instances"]:
        columns += ["objects", "density"]
    _print_table([{k: r[k] for k in columns} for r in result["class_stats"]],
                 title=f"{result['image_id']}  ({result['model']})")
    if result["metrics"]:
        _print_table([{k: r[k] for k in ("class_id", "class_name", "iou", "dice", "precision",
                                         "recall")}
                      for r in result["metrics"] if r["tp"] + r["fn"]],
                     title="against the ground truth (classes present in it)")


def _change_report(result: dict[str, Any]) -> None:
    print(f"change mask: {result['output_uri']}")
    rows = [{k: r[k] for k in ("name_a", "name_b", "pixels", "area", "area_unit")}
            for r in result["change"] if r["pixels"]]
    _print_table(rows, title=f"{result['image_id']}: from (a) -> to (b), {result['seconds']:.1f} s")


def _batch_report(rows: list[dict[str, Any]]) -> None:
    """The summary table on stdout, and one ``segflow: error:`` line per failed image."""
    counts = {s: sum(r["status"] == s for r in rows)
              for s in ("succeeded", "failed", "skipped", "announced")}
    title = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no new images"
    _print_table([{**r, "seconds": f"{r['seconds']:.1f}"} for r in rows], title=title)
    for row in rows:
        if row["status"] == "failed":
            print(f"segflow: error: {row['uri']}: {row['error']}", file=sys.stderr)


def _batch(args: argparse.Namespace, runner: Runner) -> int:
    """``batch`` and ``watch``: exit 1 when any image failed (the last pass's, when looping)."""
    from segflow.tasks.errors import UserError
    from segflow.tasks.sources.registry import image_suffixes

    if args.command == "batch":
        rows = runner.job("batch", {"source": _local(args.source), "out": _local(args.out),
                                    "config": _local(args.config), "overrides": args.set,
                                    "scheduler": args.scheduler,
                                    "concurrency": args.concurrency})
        if not rows:
            raise UserError(args.source, f"no images found ({' '.join(image_suffixes())})")
        _batch_report(rows)
        return int(any(r["status"] == "failed" for r in rows))
    from segflow.flows.batch import watch_prefix, watch_queue
    from segflow.tasks.config import load_config

    config = load_config(args.config, args.set).model_dump(mode="json")
    scheduler = args.scheduler or (None if args.emit_events else runner.use_warm_here())
    if runner.api is not None:
        runner.api.wait()
    passes = 1 if args.once else None
    if (args.source is None) == (args.queue is None):
        raise UserError("watch", "give either PREFIX or --queue SQS_URL")
    if args.queue:
        rows = watch_queue(args.queue, args.out, config, scheduler, args.once,
                           args.concurrency, _batch_report)
    else:
        rows = watch_prefix(args.source, args.out, config, scheduler, args.interval, passes,
                            args.concurrency, args.emit_events, _batch_report)
    return int(any(r["status"] == "failed" for r in rows))


def _json_value(value: Any) -> Any:
    """JSON for SQL results: exact decimals (DuckDB sums) as numbers, timestamps as ISO text."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _query(sql: str, out: str, fmt: str) -> None:
    from segflow.tasks.catalog.query import run_query

    table = run_query(out, sql)
    rows = table.to_pylist()
    if fmt == "json":
        print(json.dumps(rows, default=_json_value, indent=1))
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, sys.stdout.buffer)
    else:
        _print_table(rows)


def _show(path: str) -> None:
    from segflow.tasks.catalog.inspect import describe_store
    from segflow.tasks.errors import UserError
    from segflow.tasks.mask.store import stores_under

    stores = [path] if path.rstrip("/").endswith(".zarr") else stores_under(path)
    if not stores:
        raise UserError(path, "no mask stores here (ROOT/masks/*.zarr)")
    if len(stores) > 1:
        _print_table([_store_row(describe_store(s)) for s in stores], title=path)
        return
    info = describe_store(stores[0])
    for key in ("store", "source", "checksum", "model", "config_hash"):
        print(f"{key + ':':13}{info[key]}")
    print(f"{'state:':13}{info['state']}")
    print(f"{'levels:':13}{len(info['levels'])} (level 0: {info['shape']})")
    for line in info["outputs"]:
        print(f"{'output:':13}{line}")
    _print_table([{"id": c["id"], "name": c["name"],
                   "colour": f"[on {c['colour']}]    [/] {c['colour']}" if c["colour"] else ""}
                  for c in info["classes"]], title="classes")


def _store_row(info: dict[str, Any]) -> dict[str, Any]:
    return {"store": info["store"].rsplit("/", 1)[-1], "state": info["state"],
            "model": info["model"],
            "classes": len(info["classes"]), "levels": len(info["levels"])}


def _runs(out: str, last: int) -> None:
    from segflow.tasks.catalog.inspect import recent_runs

    rows = recent_runs(out, last)
    _print_table([{"started": f"{r['started_at']:%Y-%m-%d %H:%M:%S}", "status": r["status"],
                   "image": r["image_id"], "seconds": f"{r['seconds'] or 0:.1f}",
                   "model": r["model"], "error": r["error"] or ""} for r in rows],
                 title=f"{len(rows)} latest run(s) in {out}")


def _check_inputs(args: argparse.Namespace) -> None:
    """Fail in a second, before Prefect or Dask start: the whole config (file, keys, values),
    then every local file the command names (tasks/intake/preflight.py). A file missing for
    one image also leaves its ``failed`` runs row, written after the line is printed."""
    if args.command not in ("segment", "evaluate", "batch", "watch"):
        return
    from segflow.tasks.config import load_config
    from segflow.tasks.errors import UserError
    from segflow.tasks.intake import preflight

    cfg = load_config(args.config, args.set)
    try:
        preflight.check_local(getattr(args, "truth", None), "ground-truth file")
        preflight.check_files(cfg)
        if args.command in ("segment", "evaluate"):
            preflight.check_image(args.source, cfg)
        else:
            preflight.check_local(args.source, "file or folder")
    except UserError as exc:
        if args.command in ("segment", "evaluate"):
            reason = str(exc)
            exc.record = lambda: preflight.record_failure(args.source, args.out, cfg, reason)
        raise


def _server(args: argparse.Namespace) -> None:
    from segflow.flows import server

    if args.action == "run":
        server.run(args.idle_timeout, args.workers, args.threads)
        return
    state = (server.start(args.idle_timeout, args.workers, args.threads)
             if args.action == "start" else server.stop() if args.action == "stop"
             else server.find())
    if state is None:
        print("no segflow server running")
    elif args.action == "stop":
        print(f"stopped the segflow server (pid {state['pid']})")
    else:
        print(f"segflow server running (pid {state['pid']}, stops after "
              f"{state['idle_timeout']:.0f} s idle)\n"
              f"  Prefect UI:      {state['ui_url']}\n"
              f"  Prefect API:     {state['api_url']}\n"
              f"  Dask scheduler:  {state['scheduler']}  (dashboard {state['dashboard']})\n"
              "segflow segment/evaluate/batch/demo now run in it; "
              "SEGFLOW_SERVER=off runs a call on its own")


def _flow_command(args: argparse.Namespace, runner: Runner) -> int:
    """The commands that run flows: segment, evaluate, demo, change, batch, watch."""
    if args.command == "segment":
        _report(_segment(runner, args.source, args.out, args.config, args.set, args.scheduler))
    elif args.command == "evaluate":
        _report(_segment(runner, args.source, args.out, args.config,
                         [*args.set, f"stats.ground_truth={_local(args.truth)}"],
                         args.scheduler))
    elif args.command == "demo":
        _demo(runner, args.out)
    elif args.command == "change":
        _change_report(runner.job("change", {"a": _local_ref(args.a), "b": _local_ref(args.b),
                                             "out": _local(args.out),
                                             "scheduler": args.scheduler}))
    else:
        return _batch(args, runner)
    return 0


def _demo(runner: Runner, out: str) -> None:
    _report(_segment(runner, str(DEMO_SOURCE), out, str(DEMO_CONFIG), [], None))
    print(f"\nquery it: segflow query \"select class_name, area, area_unit from "
          f"class_stats\" --out {out}")
    # its own root: a root holds one mask per image, the latest configuration's
    deep = f"{out.rstrip('/')}/unet"
    print("\nThe same scene with the bundled U-Net, scored against its land-cover map:")
    _report(_segment(runner, str(DEMO_SOURCE), deep, str(DEMO_DEEP_CONFIG),
                     [f"stats.ground_truth={DEMO_TRUTH}"], None))
    print(f"\nquery it: segflow query \"select class_name, iou, dice from metrics "
          f"where tp + fn > 0\" --out {deep}")


def _plain_command(args: argparse.Namespace) -> None:
    """The commands that read results or manage servers: query, show, runs, server, serve."""
    if args.command == "query":
        _query(args.sql, args.out, args.format)
    elif args.command == "show":
        _show(args.path)
    elif args.command == "runs":
        _runs(args.out, args.last)
    elif args.command == "server":
        _server(args)
    elif args.command == "serve":
        from segflow.flows.deployments import main as serve_deployments

        serve_deployments(args.config)


#: commands whose flows need a Prefect API (a temporary one when no server is running)
FLOW_COMMANDS = {"segment", "evaluate", "demo", "batch", "watch", "change"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _process_defaults(args.verbose)
    if getattr(args, "wait", None) is not None:  # --wait is the config key output.wait
        args.set.append(f"output.wait={args.wait}")
    if hasattr(args, "set"):
        args.set = [_local_set(item) for item in args.set]
    runner: Runner | None = None
    from segflow.tasks.errors import SegflowError, first_line

    try:
        _check_inputs(args)
        if args.command in FLOW_COMMANDS:  # first: the temporary API starts while we import
            runner = Runner(needs_api=not getattr(args, "emit_events", False))
            return _flow_command(args, runner)
        _plain_command(args)
    except SegflowError as exc:
        print(f"segflow: error: {exc}", file=sys.stderr, flush=True)
        if hasattr(exc, "record"):  # a missing file found before the run: its runs row
            exc.record()
        return 1
    except KeyboardInterrupt:
        print("segflow: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything unforeseen still ends in one line
        source = getattr(args, "source", None) or getattr(args, "out", "segflow")
        print(f"segflow: error: {source}: {type(exc).__name__}: {first_line(exc)}",
              file=sys.stderr)
        return 1
    finally:
        if runner is not None:
            runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
