"""The checks that end a run in a second, before Prefect or Dask start: the config's files and
the source's header. The CLI and the Python API (``segflow.segment_image``) run the same ones,
so both fail as fast and leave the same ``failed`` runs row for a missing or unreadable image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segflow.tasks.config import FILE_KEYS, JobConfig, validated
from segflow.tasks.errors import UserError


def job_config(config: JobConfig | dict[str, Any] | None) -> JobConfig:
    """A config given as a mapping (the API's JSON form) validated, as ``load_config`` does:
    an unknown key or a parameter the kind does not have is a one-line error."""
    return config if isinstance(config, JobConfig) else validated(config or {})


def check_local(path: str | None, what: str) -> None:
    """A local path must exist and be readable (URLs are checked when opened)."""
    if path is None or "://" in path:
        return
    path = path.partition("#")[0]  # one item of a STAC ItemCollection: its file
    if not os.path.exists(path):
        raise UserError(path, f"no such {what}")
    if not os.access(path, os.R_OK):
        raise UserError(path, f"{what} is not readable (permission denied)")


def check_files(cfg: JobConfig) -> None:
    """Every local file the config names (weights, zones, prompts, ground truths) is there."""
    for section, key in (*FILE_KEYS, ("stats", "ground_truth")):
        value = getattr(getattr(cfg, section), key)
        check_local(value if isinstance(value, str) else None, f"file ({section}.{key})")


def check_image(source: str, cfg: JobConfig) -> None:
    """One image: it exists, and a local one opens (its header: a file that is no image ends
    here, not on a worker)."""
    from segflow.tasks.sources.registry import is_folder_image, is_image, open_source

    check_local(source, "file or folder")
    if Path(source).exists():
        if Path(source).is_dir() and not (is_image(source) or is_folder_image(source)):
            raise UserError(source, "a folder, not an image (segflow batch takes folders)")
        open_source(source, cfg.input)


def preflight_image(source: str, out: str, cfg: JobConfig) -> None:
    """``check_files`` and ``check_image``; a failure also leaves the image's ``failed`` runs
    row in ``out``'s catalog, as a run that failed later would."""
    try:
        check_files(cfg)
        check_image(source, cfg)
    except UserError as exc:
        record_failure(source, out, cfg, str(exc))
        raise


def record_failure(source: str, out: str, cfg: JobConfig, reason: str) -> None:
    """The failed runs row of an image that never started."""
    from uuid import uuid4

    from segflow.tasks.catalog.tables import new_run, record_failed
    from segflow.tasks.sources.identity import normal_uri

    record_failed(normal_uri(out), new_run(f"preflight-{uuid4()}", normal_uri(source), cfg),
                  reason, 0.0)
