"""Many images through ``run_image`` (the stages of ``segment_image``): a batch over a prefix
or manifest, and the watchers.

Idempotent by construction: an image whose bytes (source checksum) and config hash already have
a ``succeeded`` run in the catalog is skipped, so a schedule, a watcher or a redelivered
notification can fire any number of times. One Dask cluster serves the whole batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from segflow.flows.segment import run_image
from segflow.tasks.catalog.done import completed, recorded
from segflow.tasks.config import JobConfig
from segflow.tasks.errors import SegflowError, first_line, retry_transient
from segflow.tasks.intake.bids import bids_images
from segflow.tasks.intake.inventory import inventory
from segflow.tasks.intake.queue import acknowledge, receive
from segflow.tasks.runtime.cluster import dask_cluster
from segflow.tasks.sources.identity import normal_uri, source_checksum
from segflow.tasks.sources.registry import is_image

Row = dict[str, Any]
Report = Callable[[list[Row]], None]


def _row(uri: str, status: str, seconds: float = 0.0, error: str | None = None) -> Row:
    return {"uri": uri, "status": status, "seconds": round(seconds, 1), "error": error}


def _checksum(uri: str) -> str | None:
    """None when the source cannot be read: the run is attempted and records why it failed."""
    try:
        return source_checksum(uri)
    except SegflowError:
        return None


def _pending(uris: list[str], out: str, cfg: JobConfig) -> tuple[list[tuple[str, str | None]],
                                                                 list[Row]]:
    """Split ``uris`` into (uri, checksum) still to do and ``skipped`` rows for those done."""
    finished = completed(out, cfg.output_hash())
    todo, skipped = [], []
    for uri in uris:
        checksum = _checksum(uri)
        if checksum is not None and (uri, checksum) in finished:
            skipped.append(_row(uri, "skipped"))
        else:
            todo.append((uri, checksum))
    return todo, skipped


def say(line: str) -> None:
    """One whole line on stdout in one write: images run in threads, and ``print`` writes the
    text and its newline apart, so two threads' lines could run into one."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


@task(name="segment-one", cache_policy=NO_CACHE)
def segment_one(source: str, out: str, config: dict[str, Any], scheduler: str,
                checksum: str | None) -> Row:
    """One image of the batch, its stages run inside this one task run (a run per stage would
    cost more Prefect bookkeeping than a small image's work); a failure is a summary row, not a
    batch failure (``run_image`` has already written its ``failed`` runs row). Storage and
    network hiccups are retried here, as the stage tasks would: the store resumes."""
    clock = time.perf_counter()
    cfg = JobConfig.model_validate(config)
    say(f"segmenting {source}")
    try:
        retry_transient(lambda: run_image(source, out, cfg, scheduler, checksum=checksum,
                                          as_tasks=False), attempts=2, delay_s=2.0)
    except Exception as exc:
        reason = first_line(exc)
        get_run_logger().error("%s: %s", source, reason)
        return _row(source, "failed", time.perf_counter() - clock, reason)
    return _row(source, "succeeded", time.perf_counter() - clock)


@flow(name="segment_batch")
def segment_batch(sources: str | list[str], out: str, config: dict[str, Any] | None = None,
                  scheduler: str | None = None, concurrency: int = 2) -> list[Row] | State:
    """Segment every image of ``sources`` (a prefix, a manifest or a list of URIs) not already
    done into ``out``, ``concurrency`` images at a time; one summary row per image, in order.
    Stdout shows each image as it starts and ``[done/total]`` as each ends.

    The run ends ``Failed`` when any image failed (a scheduled run shows it in the UI), still
    carrying the summary: call it through ``run_batch`` to get the rows either way."""
    out = normal_uri(out)
    cfg = JobConfig.model_validate(config or {})
    if isinstance(sources, str):
        listed = (bids_images(sources, cfg.input.bids) if cfg.input.bids else
                  inventory(sources, exclude=out))
    else:
        listed = sources
    uris = list(dict.fromkeys(normal_uri(u) for u in listed))  # one entry per file
    todo, skipped = _pending(uris, out, cfg)
    rows = {r["uri"]: r for r in skipped}
    if todo:
        with dask_cluster(cfg.cluster, scheduler) as address:
            runner: ThreadPoolTaskRunner[Row] = ThreadPoolTaskRunner(
                max_workers=max(1, concurrency))
            with runner:
                futures: list[PrefectFuture[Row]] = [
                    runner.submit(segment_one, {"source": uri, "out": out,
                                                "config": cfg.model_dump(mode="json"),
                                                "scheduler": address, "checksum": checksum})
                    for uri, checksum in todo]
                for done, future in enumerate(as_completed(futures), start=1):
                    row = future.result()
                    rows[row["uri"]] = row
                    say(f"[{done}/{len(futures)}] {row['uri']}: {row['status']} in "
                        f"{row['seconds']:.1f} s")
    summary = [rows[u] for u in uris]
    if summary:
        create_table_artifact(summary, key="segflow-batch",
                              description=f"segflow batch into {out}")
    failed = sum(r["status"] == "failed" for r in summary)
    if failed:
        return Failed(message=f"{failed} of {len(summary)} images failed", data=summary)
    return summary


def run_batch(sources: str | list[str], out: str, config: dict[str, Any] | None = None,
              scheduler: str | None = None, concurrency: int = 2) -> list[Row]:
    """``segment_batch``'s summary rows, whether or not some image failed."""
    state = segment_batch(sources, out, config, scheduler, concurrency, return_state=True)
    rows = state.result(raise_on_failure=False)
    if isinstance(rows, BaseException):
        raise rows
    # a Failed state the flow returned resolves to its data: the rows as well
    return cast(list[Row], rows)


def announce(uris: list[str], out: str, cfg: JobConfig, seen: set[tuple[str, str]]) -> list[Row]:
    """Emit one ``segflow.object.created`` event per new or changed image instead of segmenting
    (a Prefect deployment trigger starts the runs); ``seen`` keeps a watcher from repeating one."""
    from segflow.flows.events import emit_object_created

    todo, rows = _pending(uris, out, cfg)
    for uri, checksum in todo:
        if checksum is None or (uri, checksum) in seen:
            continue
        emit_object_created(uri, checksum)
        seen.add((uri, checksum))
        rows.append(_row(uri, "announced"))
    return rows


def watch_prefix(prefix: str, out: str, config: dict[str, Any], scheduler: str | None,
                 interval: float, passes: int | None, concurrency: int, emit_events: bool,
                 report: Report) -> list[Row]:
    """List ``prefix`` every ``interval`` seconds and process what is new or changed, on one
    Dask cluster for all passes (warm workers keep the model); ``passes`` (None: forever)
    bounds the loop, and the last pass's rows are returned (``--once``: one, for cron and CI).
    """
    cfg = JobConfig.model_validate(config)
    seen: set[tuple[str, str]] = set()
    with ExitStack() as stack:
        if not emit_events:
            scheduler = stack.enter_context(dask_cluster(cfg.cluster, scheduler))
        done = 0
        while True:
            if emit_events:
                rows = announce(inventory(prefix, exclude=out), out, cfg, seen)
            else:
                rows = run_batch(prefix, out, config, scheduler, concurrency)
            done += 1
            if passes == 1 or any(r["status"] != "skipped" for r in rows):
                report(rows)
            if passes is not None and done >= passes:
                return rows
            time.sleep(interval)


def watch_queue(queue_url: str, out: str, config: dict[str, Any], scheduler: str | None,
                once: bool, concurrency: int, report: Report) -> list[Row]:
    """Segment the objects announced by S3 notifications on an SQS queue.

    A message is deleted once every image it names is recorded in the catalog: skipped (done
    before), succeeded, or failed with its ``failed`` row written (the catalog, not the queue,
    keeps failures; ``segflow batch`` retries them). A message whose run left no row stays and
    is redelivered. With ``once`` the queue is drained and the rows of every pass returned.
    """
    every: list[Row] = []
    cfg = JobConfig.model_validate(config)
    with dask_cluster(cfg.cluster, scheduler) as address:
        while True:
            notices = receive(queue_url, wait_s=1 if once else 20)
            if not notices:
                if once:
                    return every
                continue
            since = datetime.now(UTC)
            uris = list(dict.fromkeys(u for n in notices for u in n.uris if is_image(u)))
            rows = run_batch(uris, out, config, address, concurrency) if uris else []
            status = {r["uri"]: r["status"] for r in rows}
            written = recorded(out, [u for u, s in status.items() if s != "skipped"], since)
            for notice in notices:
                images = [u for u in notice.uris if u in status]
                if all(status[u] == "skipped" or u in written for u in images):
                    acknowledge(queue_url, notice)
            report(rows)
            every += rows
