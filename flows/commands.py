"""The CLI's jobs as functions of plain JSON arguments, so that the CLI runs them in its own
process (cold) or hands them to the warm server (flows/server.py) unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from segflow.tasks.config import ClusterConfig
from segflow.tasks.errors import SegflowError, first_line


def shared(cfg: ClusterConfig, scheduler: str | None) -> str | None:
    """The ready cluster at ``scheduler`` for a job that would start a LocalCluster of its own;
    a config that names a scheduler or another kind of cluster keeps it."""
    return scheduler if cfg.address is None and cfg.kind == "local" else None


def segment_job(args: dict[str, Any], scheduler: str | None) -> dict[str, Any]:
    """``segflow segment``: one image through ``segment_image``; its result row."""
    from segflow.flows.segment import segment_image
    from segflow.tasks.config import load_config

    cfg = load_config(args.get("config"), args.get("overrides", []))
    return segment_image(args["source"], args["out"], cfg.model_dump(mode="json"),
                         args.get("scheduler") or shared(cfg.cluster, scheduler))


def batch_job(args: dict[str, Any], scheduler: str | None) -> list[dict[str, Any]]:
    """``segflow batch``: every image under a prefix or in a manifest; one row per image."""
    from segflow.flows.batch import run_batch
    from segflow.tasks.config import load_config

    cfg = load_config(args.get("config"), args.get("overrides", []))
    return run_batch(args["source"], args["out"], cfg.model_dump(mode="json"),
                     args.get("scheduler") or shared(cfg.cluster, scheduler),
                     args.get("concurrency", 2))


def change_job(args: dict[str, Any], scheduler: str | None) -> dict[str, Any]:
    """``segflow change``: the from-to change between two masks of one grid."""
    from segflow.flows.change import change_masks

    return change_masks(args["a"], args["b"], args["out"], args.get("scheduler") or scheduler)


@dataclass(frozen=True)
class Job:
    """A CLI job and the module it needs, imported ahead (seconds) while the API starts."""

    run: Callable[[dict[str, Any], str | None], Any]
    module: str

    def prepare(self) -> None:
        import_module(self.module)

    def __call__(self, args: dict[str, Any], scheduler: str | None) -> Any:
        """Run the job, its flow runs without heartbeats (``no_heartbeats``)."""
        with no_heartbeats():
            return self.run(args, scheduler)


def no_heartbeats() -> AbstractContextManager[Any]:
    """Flow runs started here send no heartbeats: Prefect's heartbeat thread sleeps in 1 s
    steps and every flow run waits for it to end (~1 s per run); heartbeats find crashed runs
    of deployments, which ``segflow serve`` keeps."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


JOBS = {"segment": Job(segment_job, "segflow.flows.segment"),
        "batch": Job(batch_job, "segflow.flows.batch"),
        "change": Job(change_job, "segflow.flows.change")}


def run_command(command: str, args: dict[str, Any], scheduler: str | None) -> dict[str, Any]:
    """``{"result": ...}`` (JSON-safe) or ``{"error": "<source>: <reason>"}``, never a raise:
    the warm server answers every request."""
    try:
        result = JOBS[command](args, scheduler)
        return {"result": json.loads(json.dumps(result, default=str))}
    except SegflowError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # anything unforeseen still ends in one line
        return {"error": f"{args.get('source', 'segflow')}: {type(exc).__name__}: "
                         f"{first_line(exc)}"}
