"""``segment_image``: one image through open → plan → infer → write → label → measure →
record.

Prefect is the control plane (one task per stage, retries, logs); Dask is the data plane (one
Dask task per chunk, on the cluster at ``scheduler`` or a LocalCluster started for the run).
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from distributed import Client, as_completed
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tasks.catalog import write_rows
from tasks.cluster import dask_cluster, inference_resources
from tasks.config import JobConfig
from tasks.errors import SegflowError, first_line
from tasks.georef import pixel_centres
from tasks.histogram import fit_foreground
from tasks.identity import image_id, resume_key, source_checksum
from tasks.infer import segment_chunk
from tasks.instances import Instances
from tasks.inventory import done
from tasks.label import label_instances, measure_instances, thing_ids
from tasks.measure import class_rows, count_chunk
from tasks.metrics import evaluate, open_ground_truth
from tasks.models import InputSpec, SegmentationModel, build_model
from tasks.plan import Plan, plan_chunks
from tasks.pyramid import build_levels, ome_metadata
from tasks.quicklook import summary_markdown, write_quicklook
from tasks.read_raster import Raster
from tasks.read_slide import Slide
from tasks.readers import modality_of, open_source
from tasks.source import SourceBase
from tasks.store import DONE_SKIPPED, MaskStore, mark_complete, open_or_create
from tasks.tissue import background_chunks


@dataclass
class Job:
    """Everything the later stages need about one image, decided once in open-and-plan."""

    source: str
    root: str
    image_id: str
    checksum: str
    reader: SourceBase
    plan: Plan
    model: SegmentationModel
    config: JobConfig
    #: chunks known to be background before reading (slide glass): written as class 0
    background: set[tuple[int, ...]] = field(default_factory=set)

    @property
    def store_uri(self) -> str:
        return f"{self.root.rstrip('/')}/masks/{self.image_id}.zarr"


@dataclass
class Outcome:
    """What the segment stage did: chunk counts for the catalog and for resume checks."""

    store: MaskStore
    model: str
    chunks_total: int
    chunks_skipped: int
    chunks_computed: int
    reused: bool = False


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups; a bad file or config fails the same way every time, so do not."""
    return not isinstance(state.result(raise_on_failure=False), SegflowError)


@task(name="open-and-plan", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE,
      retry_condition_fn=_retry_unless_user_error)
def open_and_plan(source: str, root: str, config: JobConfig, checksum: str | None = None) -> Job:
    """Open the source, build the model and plan the chunks; ``checksum`` when the caller has
    already computed it (a batch does, to skip done images: a local file is not hashed twice)."""
    reader = open_source(source, config.input)
    spec = InputSpec(bands=len(reader.bands), dtype=reader.dtype, ndim=len(reader.spatial_shape))
    model = build_model(config, spec, source=source)
    plan = plan_chunks(reader.spatial_shape, config.tiling.chunk, config.tiling.halo,
                       stride=model.stride)
    if model.receptive_field > plan.halo:
        get_run_logger().warning("halo %d < receptive field %d: chunk seams are not exact",
                                 plan.halo, model.receptive_field)
    background = (background_chunks(reader, plan)
                  if isinstance(reader, Slide) and config.tiling.skip_empty else set())
    return Job(source=source, root=root, image_id=image_id(source),
               checksum=checksum or source_checksum(source), reader=reader, plan=plan, model=model,
               config=config, background=background)


def _store_attrs(job: Job) -> dict[str, Any]:
    spatial = {k: v for k, v in job.reader.spatial_attrs().items() if k != "grid_mapping"}
    return {
        "segflow": {
            "source_uri": job.source, "source_checksum": job.checksum,
            "model": job.model.identity(), "model_kind": job.model.kind,
            "fitted": job.model.fitted(), "config": job.config.model_dump(mode="json"),
            "config_hash": job.config.output_hash(),
            "classes": [c.model_dump() for c in job.model.classes],
            "chunks_total": len(job.plan.chunks),
        },
        "spatial": {"modality": job.reader.modality, **spatial},
    }


def _coordinates(reader: SourceBase) -> dict[str, tuple[Any, dict[str, Any]]]:
    if isinstance(reader, Raster):
        return pixel_centres(reader.height, reader.width, reader.crs_wkt, reader.transform)
    return {}


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=True)


@task(name="segment", cache_policy=NO_CACHE)
def segment(job: Job, scheduler: str) -> Outcome:
    """Fit global parameters, create (or resume) the store, run every missing chunk."""
    with Client(scheduler, set_as_default=False) as client:
        if job.config.input.foreground == "otsu":
            job.reader = fit_foreground(job.reader, client)
        job.model.fit(job.reader, client)
        identity = job.model.identity()
        key = resume_key(job.checksum, identity, job.config.output_hash())
        store, done, complete = open_or_create(
            job.store_uri, job.plan, job.reader.dims, len(job.model.classes), _store_attrs(job),
            key, job.reader.spatial_attrs().get("grid_mapping"), _coordinates(job.reader))
        todo = [c for c in job.plan.chunks if c.index not in done]
        total = len(job.plan.chunks)
        if complete:
            get_run_logger().info("%s: complete output found, nothing to compute", job.store_uri)
        else:
            [model] = client.scatter([job.model], broadcast=True, hash=False)
            keys = [f"chunk-{job.image_id}-{'-'.join(map(str, c.index))}" for c in todo]
            flags = [c.index in job.background for c in todo]
            futures = client.map(segment_chunk, todo, flags, source=job.reader, model=model,
                                 store=store, skip_empty=job.config.tiling.skip_empty,
                                 retries=2, key=keys,
                                 resources=inference_resources(client, job.model.accelerated))
            with _progress() as bar:
                progress = bar.add_task(job.image_id, total=total, completed=total - len(todo))
                for fut in as_completed(futures, loop=client.loop):
                    try:
                        fut.result()
                    except SegflowError:
                        client.cancel(futures)
                        raise
                    except Exception as exc:
                        client.cancel(futures)
                        raise SegflowError(job.source, f"chunk failed: {first_line(exc)}") from exc
                    bar.advance(progress)
        progress_flags = store.progress()[:]
        skipped = int((progress_flags == DONE_SKIPPED).sum())
        if not complete and (progress_flags == 0).any():
            raise SegflowError(job.source, "some chunks were not written; re-run to resume")
        return Outcome(store=store, model=identity, chunks_total=total, chunks_skipped=skipped,
                       chunks_computed=0 if complete else len(todo), reused=complete)


@task(name="label", cache_policy=NO_CACHE)
def label(job: Job, outcome: Outcome, scheduler: str) -> Instances | None:
    """Give every object one id across chunk borders (``stats.instances``), and measure them."""
    if not job.config.stats.instances:
        return None
    things = thing_ids(job.model.classes, job.config.stats.things, job.source)
    row_areas, _ = job.reader.cell_measure()
    with Client(scheduler, set_as_default=False) as client:
        if outcome.reused:
            return measure_instances(client, outcome.store, job.plan, row_areas)
        return label_instances(client, outcome.store, job.plan, things, row_areas)


@task(name="finish", cache_policy=NO_CACHE)
def finish(job: Job, outcome: Outcome, scheduler: str) -> None:
    """Build the pyramid, write the OME-Zarr metadata and mark the store complete, last."""
    if outcome.reused:
        return
    with Client(scheduler, set_as_default=False) as client:
        levels = build_levels(job.store_uri, client) if job.config.output.pyramid else 1
    units, size = job.reader.cell_size()
    ome = ome_metadata(job.reader.dims, units, size, levels, job.model.classes, job.image_id)
    mark_complete(job.store_uri, {"chunks_skipped": outcome.chunks_skipped, "levels": levels},
                  ome)


@dataclass
class Measurements:
    """Rows for the catalog tables, by table name."""

    class_stats: list[dict[str, Any]]
    instances: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    confusion: list[dict[str, Any]] = field(default_factory=list)


@task(name="measure", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def measure(job: Job, outcome: Outcome, objects: Instances | None,
            scheduler: str) -> Measurements:
    """Per-class cells, area or volume, fraction (and objects), per-object rows and, with a
    ground truth, quality metrics: all streamed over the written mask on workers."""
    row_areas, base_unit = job.reader.cell_measure()
    want = job.config.stats
    unit = {"m2": want.area_unit, "mm3": want.volume_unit, "um2": want.slide_unit}[base_unit]
    unit = unit if row_areas is not None else None
    n_labels = max(c.id for c in job.model.classes) + 1
    with Client(scheduler, set_as_default=False) as client:
        [areas] = client.scatter([row_areas], broadcast=True) if row_areas is not None else [None]
        futures = client.map(count_chunk, job.plan.chunks, store=outcome.store,
                             n_labels=n_labels, row_areas=areas, pure=False)
        counts = client.gather(futures)
        evaluation = (evaluate(client, outcome.store, job.plan,
                               open_ground_truth(want.ground_truth, job.reader),
                               job.model.classes) if want.ground_truth else None)
    per_class = None
    if objects is not None:
        found = objects.counts_per_class()
        per_class = {t: found.get(t, 0)
                     for t in thing_ids(job.model.classes, want.things, job.source)}
    result = Measurements(class_rows(job.model.classes, counts, unit, per_class))
    if objects is not None:
        result.instances = objects.rows(job.reader, unit)
    if evaluation is not None:
        if evaluation.unknown:
            get_run_logger().warning("%s: %d valid ground-truth cells hold no class id of the "
                                     "model; left out of the metrics", want.ground_truth,
                                     evaluation.unknown)
        result.metrics = evaluation.metric_rows()
        result.confusion = evaluation.confusion_rows()
    return result


@task(name="record", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record(root: str, run: dict[str, Any], found: Measurements) -> None:
    """Append this run's rows to the catalog (the run row last: a run row means it is all in)."""
    keys = {"run_id": run["run_id"], "image_id": run["image_id"]}
    for table in ("class_stats", "instances", "metrics", "confusion"):
        rows = getattr(found, table)
        if rows:
            write_rows(root, table, run["run_id"], [{**r, **keys} for r in rows])
    write_rows(root, "runs", run["run_id"], [run])


@task(name="publish", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish(job: Job, found: Measurements) -> str:
    """Show the result in the Prefect UI: the class table and a quick-look picture, which is also
    written beside the store (``masks/<image_id>.png``); returns the picture's URI."""
    png_uri = f"{job.root.rstrip('/')}/masks/{job.image_id}.png"
    png = write_quicklook(job.reader, job.store_uri, png_uri)
    # artifact keys allow lowercase letters, digits and dashes only
    key = "segflow-" + re.sub(r"[^a-z0-9]+", "-", job.image_id.lower()).strip("-")
    create_markdown_artifact(summary_markdown(job.image_id, found.class_stats, found.metrics,
                                              png_uri),
                             key=key, description=f"segflow: {job.source}")
    # inline (a data URI): the UI shows it without access to the bucket or the disk
    create_image_artifact(f"data:image/png;base64,{base64.b64encode(png).decode()}",
                          key=f"{key}-quicklook", description=f"quick look: {png_uri}")
    return png_uri


@flow(name="segment_image")
def segment_image(source: str, out: str, config: dict[str, Any] | None = None,
                  scheduler: str | None = None, skip_done: bool = False,
                  checksum: str | None = None) -> dict[str, Any]:
    """Segment one image into ``out``; returns the run row plus class stats and chunk counts.

    ``skip_done`` (event-triggered runs): when the catalog already holds a succeeded run of
    these bytes with this config, record nothing and return ``status: skipped``, so an event
    can fire any number of times. ``checksum``: the source's, when the caller knows it."""
    cfg = JobConfig.model_validate(config or {})
    started = datetime.now(UTC)
    clock = time.perf_counter()
    run: dict[str, Any] = {"run_id": str(flow_run.id or f"local-{time.time_ns()}"),
                           "image_id": image_id(source), "source_uri": source,
                           "modality": modality_of(source, cfg.input), "model": cfg.model.kind,
                           "config_hash": cfg.output_hash(), "started_at": started}
    try:
        if skip_done:  # decided before the source is opened or the model loaded
            checksum = checksum or source_checksum(source)
            if done(out, source, checksum, run["config_hash"]):
                get_run_logger().info("%s: already done with these bytes and config", source)
                return {**run, "source_checksum": checksum, "status": "skipped"}
        job = open_and_plan(source, out, cfg, checksum)
        run.update(source_checksum=job.checksum, output_uri=job.store_uri,
                   chunks_total=len(job.plan.chunks))
        with dask_cluster(cfg.cluster, scheduler) as address:
            outcome = segment(job, address)
            objects = label(job, outcome, address)
            finish(job, outcome, address)
            found = measure(job, outcome, objects, address)
        run.update(status="succeeded", model=outcome.model, chunks_skipped=outcome.chunks_skipped,
                   finished_at=datetime.now(UTC),
                   seconds=time.perf_counter() - clock)
        record(out, run, found)
        publish(job, found)
        return {**run, "class_stats": found.class_stats, "metrics": found.metrics,
                "instances": len(found.instances), "chunks_computed": outcome.chunks_computed,
                "reused": outcome.reused}
    except Exception as exc:
        reason = exc.reason if isinstance(exc, SegflowError) else first_line(exc)
        run.update(status="failed", error=reason, finished_at=datetime.now(UTC),
                   seconds=time.perf_counter() - clock)
        write_rows(out, "runs", run["run_id"], [run])
        raise
