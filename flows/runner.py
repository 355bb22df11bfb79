"""Where a command's jobs run: in the warm server (flows/server.py) when one is running, else in
this process, with Prefect's temporary API started first so that it comes up while the job's
modules import and its Dask cluster starts. The CLI only picks the command; this decides where.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any


def _api_configured() -> bool:
    """A Prefect API is set: in the environment, the active Prefect profile, or the settings of
    an already imported Prefect (a test harness)."""
    from segflow.flows.server import profile_api_url

    if os.environ.get("PREFECT_API_URL") or profile_api_url():
        return True
    if "prefect" not in sys.modules:
        return False
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


class Runner:
    """Where this call's jobs run: in the warm server when one is running (no start-up cost),
    else here, with Prefect's temporary API started first so it comes up while we import."""

    def __init__(self, needs_api: bool) -> None:
        from segflow.flows import server

        self.server = server
        self.warm = server.find() if os.environ.get("SEGFLOW_SERVER") != "off" else None
        self.api = None
        self.stack = ExitStack()
        if self.warm is None and needs_api and not _api_configured():
            self.api = server.TemporaryAPI()

    def use_warm_here(self) -> str | None:
        """For long-running commands run here: point Prefect at the warm server's API and
        return its Dask scheduler (None when no warm server runs)."""
        if self.warm is None:
            return None
        os.environ["PREFECT_API_URL"] = self.warm["api_url"]
        return str(self.warm["scheduler"])

    def job(self, command: str, payload: dict[str, Any]) -> Any:
        if self.warm is not None:  # nothing heavy is imported on this path
            from segflow.tasks.errors import UserError

            answer = self.server.call(self.warm, command, payload)
            if "error" in answer:
                source, _, reason = str(answer["error"]).partition(": ")
                raise UserError(source, reason)
            return answer["result"]
        from segflow.flows.commands import JOBS

        scheduler = None
        if self.api is not None:  # imports and the cluster's start while the API comes up
            cluster = self._start_cluster(payload)
            JOBS[command].prepare()
            self.api.wait()
            scheduler = cluster.result() if cluster else None
        return JOBS[command](payload, scheduler)

    def _start_cluster(self, payload: dict[str, Any]) -> Future[str] | None:
        """The job's LocalCluster, started in a thread now (closed in ``close``)."""
        from segflow.tasks.config import load_config
        from segflow.tasks.runtime.cluster import dask_cluster

        cfg = load_config(payload.get("config"), payload.get("overrides", [])).cluster
        if payload.get("scheduler") or cfg.address or cfg.kind != "local":
            return None
        return ThreadPoolExecutor(1).submit(self.stack.enter_context, dask_cluster(cfg))

    def close(self) -> None:
        """Close the cluster started here (the temporary API stops at exit, after Prefect's
        log and event workers have drained into it)."""
        self.stack.close()
