"""Every measurement of one written mask, streamed on the workers: class statistics, objects
(``stats.instances``), zonal statistics (``stats.zones``) and quality against a ground truth
(``stats.ground_truth``), as rows for the catalog tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from distributed import Client

from segflow.tasks.mask.owned import paint_instances
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.classes import class_rows, count_chunk, report_unit
from segflow.tasks.measure.features import measure_objects
from segflow.tasks.measure.instances import label_instances, measure_instances
from segflow.tasks.measure.matching import instance_metrics
from segflow.tasks.measure.metrics import evaluate, open_ground_truth
from segflow.tasks.measure.objects import Instances
from segflow.tasks.measure.regions import region_rows, with_means, zone_object_rows
from segflow.tasks.measure.zones import read_zones, zone_rows
from segflow.tasks.models.instance import InstanceModel, thing_ids
from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.cluster import broadcast


@dataclass
class Measurements:
    """Rows for the catalog tables, by table name."""

    class_stats: list[dict[str, Any]]
    instances: list[dict[str, Any]] = field(default_factory=list)
    #: the long ``object_measurements`` table (tasks/measure/features.py), Arrow columns
    object_measurements: pa.Table | None = None
    region_objects: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    confusion: list[dict[str, Any]] = field(default_factory=list)
    zone_stats: list[dict[str, Any]] = field(default_factory=list)
    instance_metrics: list[dict[str, Any]] = field(default_factory=list)
    #: valid ground-truth cells holding no class id of the model, left out of the metrics
    unknown_truth: int = 0
    #: cells ``input.mask`` (a cloud or QA asset) made nodata; None: no mask rule
    cells_masked: int | None = None


def find_objects(client: Client, job: Job, store: MaskStore, reused: bool) -> Instances | None:
    """Give every object one id across chunk borders (``stats.instances``) and measure it; a
    reused store is already labelled, so it is only measured."""
    if not job.instances:
        return None
    row_areas = job.reader.cell_measure()
    if reused:
        return measure_instances(client, store, job.plan, row_areas)
    if isinstance(job.model, InstanceModel):  # objects found by the model, merged by owner
        return paint_instances(client, job.model, store, job.plan, row_areas)
    things = thing_ids(job.model.classes, job.config.stats.things, job.source)
    return label_instances(client, store, job.plan, things, row_areas)


def measure_mask(client: Client, job: Job, store: MaskStore,
                 objects: Instances | None) -> Measurements:
    """Per-class cells, area or volume, fraction (and objects), per-object rows and, with a
    ground truth, quality metrics."""
    row_areas = job.reader.cell_measure()
    want = job.config.stats
    unit = report_unit(job.reader, row_areas, want)
    n_labels = max(c.id for c in job.model.classes) + 1
    areas = broadcast(client, row_areas)
    counts = client.gather(client.map(count_chunk, job.plan.chunks, store=store,
                                      n_labels=n_labels, row_areas=areas, pure=False))
    per_class = None
    if objects is not None:
        found = objects.counts_per_class()
        per_class = {t: found.get(t, 0)
                     for t in thing_ids(job.model.classes, want.things, job.source)}
    result = Measurements(class_rows(job.model.classes, counts, unit, per_class))
    if objects is not None:
        result.instances = objects.rows(job.reader, unit)
        result.object_measurements = measure_objects(client, store, job.plan, job.reader,
                                                     objects, tuple(want.measure))
        if want.regions:
            rows, members = region_rows(
                client, job.plan, open_ground_truth(want.regions, job.reader, "stats.regions"),
                objects, areas, unit, want.region_names)
            with_means(rows, members, result.object_measurements)
            result.region_objects = rows
    if want.zones:
        georef = job.reader.georef
        assert georef is not None, "plan_job refuses zones without a georeferenced raster"
        zones = read_zones(want.zones, want.zone_id, georef)
        result.zone_stats = zone_rows(client, store, job.plan, zones, job.model.classes, areas,
                                      unit)
        if objects is not None:
            rows, members = zone_object_rows(zones, objects, job.reader.spatial_shape,
                                             job.reader.cell_size(), unit)
            with_means(rows, members, result.object_measurements)
            result.region_objects += rows
    if want.ground_truth:
        evaluation = evaluate(client, store, job.plan,
                              open_ground_truth(want.ground_truth, job.reader), job.model.classes)
        result.unknown_truth = evaluation.unknown
        result.metrics = evaluation.metric_rows()
        result.confusion = evaluation.confusion_rows()
    if want.ground_truth_instances and objects is not None:
        truth = open_ground_truth(want.ground_truth_instances, job.reader)
        result.instance_metrics = instance_metrics(client, store, job.plan, truth, objects)
    return result
