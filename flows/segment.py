"""``segment_image``: one image through plan → fit → infer → write → label → finish → measure →
export → record → publish.

Prefect is the control plane (five tasks: open-and-plan, segment, measure, record, publish;
retries, logs); Dask is the data plane (one Dask task per chunk, on the cluster at
``scheduler`` or a LocalCluster started for the run).
Each stage is one call into ``segflow.tasks``; this module only wires them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run
from prefect.utilities.annotations import quote

from segflow.tasks.catalog.done import done
from segflow.tasks.catalog.tables import new_run, record_failed, record_run
from segflow.tasks.config import JobConfig
from segflow.tasks.errors import SegflowError, TransientError, UserError, first_line, output_error
from segflow.tasks.mask.lease import hold
from segflow.tasks.mask.pyramid import build_levels, ome_metadata
from segflow.tasks.mask.quicklook import (
    artifact_image,
    picture,
    summary_markdown,
    write_quicklook,
)
from segflow.tasks.mask.run import Tally, run_chunks, tally
from segflow.tasks.mask.store import (
    INSTANCES,
    MaskStore,
    has_instances,
    mark_complete,
    open_job_store,
)
from segflow.tasks.measure.masked import masked_cells
from segflow.tasks.measure.objects import Instances
from segflow.tasks.measure.summary import Measurements, find_objects, measure_mask
from segflow.tasks.plan.job import Job, fitted, plan_job
from segflow.tasks.runtime.cluster import client_for, dask_cluster
from segflow.tasks.runtime.crash import crash_point
from segflow.tasks.sources.identity import normal_uri, source_checksum


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry storage and network hiccups; a bad file or config fails the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


#: Prefect settings of the stages that read or write storage
RETRIED: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "cache_policy": NO_CACHE,
           "retry_condition_fn": _retry_unless_user_error}


@dataclass(frozen=True)
class Outcome:
    """What the segment stage did: the fitted job, its store and chunk counts."""

    job: Job
    store: MaskStore
    chunks: Tally
    reused: bool = False


@task(name="open-and-plan", **RETRIED)
def open_and_plan(source: str, root: str, config: JobConfig, checksum: str | None = None) -> Job:
    """Open the source, build the model and plan the chunks."""
    job = plan_job(source, root, config, checksum)
    if job.unreached_halo:
        get_run_logger().warning("halo %d < receptive field %d: chunk seams are not exact",
                                 job.plan.halo, job.model.receptive_field)
    return job


@task(name="segment", cache_policy=NO_CACHE)
def segment(job: Job, scheduler: str) -> tuple[Outcome, Instances | None]:
    """The mask, whole: its chunks, its objects' ids, its pyramid, quick look and metadata.
    One Prefect task for these steps (none of them retried): each task run costs the Prefect
    server about 0.04 CPU-s here, a sizeable share of a small image's run (BENCHMARKS.md §11)."""
    outcome = compute(job, scheduler)
    objects = label(outcome, scheduler)
    finish(outcome, scheduler)
    return outcome, objects


def compute(job: Job, scheduler: str) -> Outcome:
    """Fit global parameters, create (or resume) the store, run every missing chunk."""
    client = client_for(scheduler)
    job = fitted(job, client)
    crash_point("fit")
    store, written, complete = open_job_store(job)
    todo = [c for c in job.plan.chunks if c.index not in written]
    if complete:
        get_run_logger().info("%s: complete output found, nothing to compute", store.uri)
    else:
        run_chunks(client, job, store, todo)
    chunks = tally(store, [] if complete else todo)
    if not chunks.recorded:
        raise TransientError(job.source, "some chunks were not written; re-run to resume")
    return Outcome(job=job, store=store, chunks=chunks, reused=complete)


def label(outcome: Outcome, scheduler: str) -> Instances | None:
    """Give every object one id across chunk borders (``stats.instances``), and measure them."""
    client = client_for(scheduler)
    found = find_objects(client, outcome.job, outcome.store, outcome.reused)
    if found is not None and found.cut:
        get_run_logger().warning(
            "%s: %d object(s) reach their chunk's read window and may be cut: raise "
            "stats.max_object (the halo follows it)", outcome.job.source, found.cut)
    if found is not None and found.capped:
        get_run_logger().warning(
            "%s: %d model call(s) returned the most detections allowed, so objects may be "
            "missing: raise model.params.max_detections", outcome.job.source, found.capped)
    return found


def finish(outcome: Outcome, scheduler: str) -> None:
    """Build the pyramid, draw the quick look (``masks/<image_id>.png``), write the OME-Zarr
    metadata and mark the store complete, last: a complete store has every output."""
    if outcome.reused:
        return
    job = outcome.job
    client = client_for(scheduler)
    pyramid = job.config.output.pyramid
    levels = build_levels(job.store_uri, client) if pyramid else 1
    units, size = job.reader.cell_size()
    origin = job.reader.spatial_ref().origin(len(size))
    labels = {}
    if has_instances(job.store_uri):  # the object ids: a label image of their own
        count = build_levels(job.store_uri, client, INSTANCES) if pyramid else 1
        labels["instances"] = ome_metadata(job.reader.dims, units, size, count, None,
                                           "instances", origin)
    crash_point("pyramid")
    write_quicklook(job.reader, job.store_uri, job.picture_uri)
    crash_point("quicklook")
    ome = ome_metadata(job.reader.dims, units, size, levels, job.model.classes, job.image_id,
                       origin)
    mark_complete(job.store_uri, {"chunks_skipped": outcome.chunks.skipped, "levels": levels},
                  ome, labels)


@task(name="measure", **RETRIED)
def measure(outcome: Outcome, objects: Instances | None, scheduler: str
            ) -> tuple[Measurements, list[dict[str, Any]]]:
    """The run's figures, then its files for other tools (retried together: both only read
    the finished mask, and the files are written whole or not at all)."""
    found = measurements(outcome, objects, scheduler)
    crash_point("measure")
    return found, export(outcome, found, scheduler)


def measurements(outcome: Outcome, objects: Instances | None, scheduler: str) -> Measurements:
    """Class statistics, objects and quality metrics, streamed over the written mask."""
    client = client_for(scheduler)
    found = replace(measure_mask(client, outcome.job, outcome.store, objects),
                    cells_masked=masked_cells(client, outcome.job, outcome.store))
    if found.unknown_truth:
        get_run_logger().warning("%s: %d valid ground-truth cells hold no class id of the "
                                 "model; left out of the metrics",
                                 outcome.job.config.stats.ground_truth, found.unknown_truth)
    return found


def export(outcome: Outcome, found: Measurements, scheduler: str) -> list[dict[str, Any]]:
    """Files for other tools (polygons, a label file; ``output.*``) and the run's STAC item,
    as ``outputs`` rows."""
    # imported here: polygons and label files cost a second of imports that a run writing
    # none of them, and every CLI start, would pay
    from segflow.tasks.export.outputs import write_outputs
    from segflow.tasks.export.stac import write_stac_item

    job = outcome.job
    if job.reader.modality == "volume" and (job.config.output.vectors or
                                            job.config.output.qupath):
        get_run_logger().warning("%s: volumes are not polygonised (output.vectors and "
                                 "output.qupath are for 2-D images)", job.source)
    rows = write_outputs(client_for(scheduler), job, outcome.store,
                         found.instances if job.instances else None, found.object_measurements)
    item = write_stac_item(job, found, rows, found.cells_masked)  # last: it lists the others
    return rows + ([item] if item else [])


@task(name="record", **RETRIED)
def record(root: str, run: dict[str, Any], found: Measurements,
           outputs: list[dict[str, Any]]) -> None:
    """Append this run's rows to the catalog (the run row last: a run row means it is all in)."""
    record_run(root, run, {"class_stats": found.class_stats, "instances": found.instances,
                           "object_measurements": found.object_measurements,
                           "region_objects": found.region_objects,
                           "metrics": found.metrics, "confusion": found.confusion,
                           "zone_stats": found.zone_stats, "outputs": outputs,
                           "instance_metrics": found.instance_metrics})


@task(name="publish", **RETRIED)
def publish(job: Job, found: Measurements) -> str:
    """Show the result in the Prefect UI: the class table and the quick-look picture drawn
    beside the store; returns the picture's URI."""
    png = picture(job)
    # artifact keys allow lowercase letters, digits and dashes only
    key = "segflow-" + re.sub(r"[^a-z0-9]+", "-", job.image_id.lower()).strip("-")
    create_markdown_artifact(summary_markdown(job.image_id, found.class_stats, found.metrics,
                                              job.picture_uri),
                             key=key, description=f"segflow: {job.source}")
    # inline (a small JPEG data URI): the UI shows it without access to the bucket or the disk
    create_image_artifact(artifact_image(png), key=f"{key}-quicklook",
                          description=f"quick look: {job.picture_uri}")
    return job.picture_uri


def run_image(source: str, out: str, cfg: JobConfig, scheduler: str | None = None,
              skip_done: bool = False, checksum: str | None = None,
              as_tasks: bool = True) -> dict[str, Any]:
    """One image through every stage; returns the run row plus class stats and chunk counts.

    ``as_tasks``: each stage is a Prefect task run of the current flow (one image, visible
    stage by stage in the UI); False calls the same stage functions directly, for a batch,
    where the image's task run is the unit and Prefect's per-run bookkeeping (~0.1-0.3 s per
    task run against a local API on 2 cores) would outweigh a small image's work.
    """
    def stage(t: Any) -> Any:
        return t if as_tasks else t.fn

    def held(value: Any) -> Any:
        """A stage's argument as Prefect passes it without walking it: Prefect looks for
        futures in every task argument, item by item, and a job's chunk list or a run's
        object tables hold thousands (a measurable share of each small image's time)."""
        return quote(value) if as_tasks else value

    source, out = normal_uri(source), normal_uri(out)
    clock = time.perf_counter()
    run = new_run(str(flow_run.id or task_run.id or f"local-{time.time_ns()}"), source, cfg)
    if not as_tasks:  # one batch task runs many images: each gets its own run id
        run["run_id"] = f"{run['run_id']}-{time.time_ns()}"
    try:
        if skip_done:  # decided before the source is opened or the model loaded
            checksum = checksum or source_checksum(source)
            if done(out, source, checksum, run["config_hash"]):
                get_run_logger().info("%s: already done with these bytes and config", source)
                return {**run, "source_checksum": checksum, "status": "skipped"}
        job = stage(open_and_plan)(source, out, held(cfg), checksum)
        crash_point("open")
        run.update(source_checksum=job.checksum, output_uri=job.store_uri,
                   modality=job.reader.modality, chunks_total=len(job.plan.chunks))
        # one writer per mask: held from before the store is opened until its picture is drawn
        with hold(job.store_uri, run["run_id"], cfg.output.lease_seconds, cfg.output.wait), \
                dask_cluster(cfg.cluster, scheduler) as address:
            outcome, objects = stage(segment)(held(job), address)
            found, outputs = stage(measure)(held(outcome), held(objects), address)
            crash_point("export")
            run.update(status="succeeded", model=outcome.job.model.identity(),
                       chunks_skipped=outcome.chunks.skipped, finished_at=datetime.now(UTC),
                       seconds=time.perf_counter() - clock)
            stage(record)(out, held(run), held(found), held(outputs))
            crash_point("publish")
            stage(publish)(held(outcome.job), held(found))
        return {**run, "class_stats": found.class_stats, "metrics": found.metrics,
                "instances": len(found.instances), "cells_masked": found.cells_masked,
                "chunks_computed": outcome.chunks.computed,
                "chunks_nodata": outcome.chunks.nodata,
                "chunks_background": outcome.chunks.background, "reused": outcome.reused,
                "exports": [o["uri"] for o in outputs if o["output"] == "export"]}
    except Exception as exc:
        error = exc if isinstance(exc, SegflowError) else output_error(out, exc)
        try:
            record_failed(out, run, first_line(error), time.perf_counter() - clock)
        except OSError as unrecorded:  # a full disk may not take even this row
            get_run_logger().error("%s: the failed run could not be recorded: %s", out,
                                   first_line(unrecorded))
        if error is exc:
            raise
        raise error from exc


@flow(name="segment_image")
def segment_image(source: str, out: str, config: dict[str, Any] | None = None,
                  scheduler: str | None = None, skip_done: bool = False,
                  checksum: str | None = None) -> dict[str, Any]:
    """Segment one image into ``out``; returns the run row plus class stats and chunk counts.

    ``skip_done`` (event-triggered runs): when the catalog already holds a succeeded run of
    these bytes with this config, record nothing and return ``status: skipped``, so an event
    can fire any number of times. ``checksum``: the source's, when the caller knows it."""
    return run_image(source, out, JobConfig.model_validate(config or {}), scheduler, skip_done,
                     checksum)
