"""``segflow serve``: the Prefect deployments of configs/deployments.yaml, served by this process.

Three shapes of deployment, each a flow with fixed parameters:

- ``batch`` with ``cron``: the whole prefix (or manifest) on a schedule, e.g. nightly; images
  already done with the same bytes and config are skipped, so it costs a listing when idle.
- ``batch`` with ``interval``: the watcher; the same batch every N seconds picks up what is new
  or changed under the prefix.
- ``on-arrival``: ``segment_image`` started by a trigger on each ``segflow.object.created`` event
  whose resource id (the image URI) matches ``match``; the URI becomes the run's ``source``.

Prefect's ``serve`` registers them with the Prefect server at ``PREFECT_API_URL`` and runs their
flow runs in subprocesses here; the server's scheduler and automations create the runs.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal, cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Interval, Schedule
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from segflow import configs
from segflow.flows.events import OBJECT_CREATED, require_server
from segflow.tasks.config import ClusterConfig, load_config, problems, read_yaml
from segflow.tasks.errors import UserError
from segflow.tasks.runtime.cluster import dask_cluster

DEFAULT_PATH = configs.FOLDER / "deployments.yaml"


class DeploymentSpec(BaseModel):
    """One deployment: which flow, on what, into which root, and when it runs."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["batch", "on-arrival"]
    out: str                          # output root (local path or URL)
    config: str | None = None         # job config YAML, relative to the deployments file
    scheduler: str | None = None      # tcp://host:8786 of a Dask scheduler; None: a LocalCluster
    prefix: str | None = None         # batch: prefix or manifest of the images
    concurrency: int = Field(2, ge=1)  # batch: images at a time
    cron: str | None = None           # batch: cron schedule, in ``timezone``
    timezone: str = "UTC"
    interval: float | None = Field(None, gt=0)  # batch: seconds between runs (a watcher)
    match: str | None = None          # on-arrival: image URIs to react to; a trailing * is a
    #                                   prefix match (s3://bucket/incoming/*); None: every URI

    @model_validator(mode="after")
    def _complete(self) -> DeploymentSpec:
        if self.kind == "batch" and (not self.prefix or (self.cron is None) == (
                self.interval is None)):
            raise ValueError(f"{self.name}: a batch needs a prefix and one of cron or interval")
        if self.kind == "on-arrival" and (self.prefix or self.cron or self.interval):
            raise ValueError(f"{self.name}: on-arrival runs on events: no prefix, cron or "
                             "interval")
        return self


class DeploymentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployments: list[DeploymentSpec]


def load_specs(path: str | Path) -> list[DeploymentSpec]:
    """Read and validate a deployments file."""
    tree = read_yaml(path, "deployments file")
    try:
        return DeploymentsFile.model_validate(tree).deployments
    except ValidationError as exc:
        raise UserError(str(path), f"invalid deployments: {problems(exc)}") from exc


def build(spec: DeploymentSpec, folder: Path, shared: str | None = None) -> RunnerDeployment:
    """The Prefect deployment for one spec; the job config is read and validated now, so a bad
    config fails at ``serve`` rather than at 2 a.m. ``shared``: the scheduler of the serve
    process's own cluster, used by specs that name none."""
    config = load_config(folder / spec.config if spec.config else None).model_dump(mode="json")
    scheduler = spec.scheduler or shared
    if spec.kind == "on-arrival":
        from segflow.flows.segment import segment_image

        trigger = DeploymentEventTrigger(
            name=f"{spec.name}: {OBJECT_CREATED}", expect={OBJECT_CREATED},
            match={"prefect.resource.id": spec.match} if spec.match else {},
            parameters={"source": "{{ event.resource.id }}", "out": spec.out, "config": config,
                        "scheduler": scheduler, "skip_done": True})
        # to_deployment returns a coroutine only when called from async code; this is sync
        return cast(RunnerDeployment, segment_image.to_deployment(
            name=spec.name, triggers=[trigger],
            description=f"segment each arriving {spec.match}"))
    from segflow.flows.batch import segment_batch

    params: dict[str, Any] = {"sources": spec.prefix, "out": spec.out, "config": config,
                              "scheduler": scheduler, "concurrency": spec.concurrency}
    if spec.cron:
        schedule: Schedule = Cron(spec.cron, timezone=spec.timezone)
    else:
        assert spec.interval is not None  # DeploymentSpec's check: a batch has cron or interval
        schedule = Interval(spec.interval, timezone=spec.timezone)
    return cast(RunnerDeployment, segment_batch.to_deployment(
        name=spec.name, parameters=params, schedule=schedule,
        description=f"segment what is new under {spec.prefix}"))


def main(config_path: str | None = None, scheduler: str | None = None) -> None:
    """Serve every deployment of ``config_path`` (default configs/deployments.yaml) until
    stopped. Schedules stay active when this process stops, so a restarted serve picks up.

    Prefect runs each flow run in a subprocess; deployments that name no scheduler share one
    LocalCluster started here for the life of the serve, so a run costs no cluster start and
    its workers keep models loaded between runs (``scheduler``: use that cluster instead)."""
    path = Path(config_path) if config_path else DEFAULT_PATH
    require_server("deployments", str(path))
    specs = load_specs(path)
    with ExitStack() as stack:
        shared = scheduler
        if shared is None and any(s.scheduler is None for s in specs):
            shared = stack.enter_context(dask_cluster(ClusterConfig()))
        serve(*[build(spec, path.parent, shared) for spec in specs], pause_on_shutdown=False)

