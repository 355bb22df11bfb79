"""``segflow.segment_image``: the Python API's one image, checked as the CLI checks it before
the flow (and its Prefect API and Dask cluster) starts."""

from __future__ import annotations

from typing import Any

from segflow.tasks.config import JobConfig
from segflow.tasks.intake.preflight import job_config, preflight_image


def segment_image(source: str, out: str, config: JobConfig | dict[str, Any] | None = None,
                  scheduler: str | None = None, skip_done: bool = False,
                  checksum: str | None = None) -> dict[str, Any]:
    """Segment one image into ``out`` (the ``segment_image`` flow); returns the run row plus
    class stats and chunk counts. A bad config, a missing file or a file that is no image ends
    in one ``UserError`` line before Prefect or Dask start (the latter two with a ``failed``
    runs row), as ``segflow segment`` does."""
    cfg = job_config(config)
    preflight_image(source, out, cfg)
    from segflow.flows.commands import no_heartbeats
    from segflow.flows.segment import segment_image as flow

    with no_heartbeats():  # as the CLI's runs: a second less per image
        result: dict[str, Any] = flow(source, out, cfg.model_dump(mode="json"), scheduler,
                                      skip_done, checksum)
    return result
