"""What lies in an output root, for a person at a terminal (``segflow show``, ``segflow runs``):
a mask store's provenance and state read from its own attributes, and the latest runs from the
catalog. Nothing here writes."""

from __future__ import annotations

from typing import Any

import numpy as np

from segflow.tasks.catalog.query import run_query
from segflow.tasks.mask.store import INSTANCES, open_store_group
from segflow.tasks.runtime.layout import EXPORT_SUFFIX, VECTOR_SUFFIX, OutputRoot
from segflow.tasks.runtime.storage import filesystem
from segflow.tasks.runtime.zarr_nodes import array_at

#: optional parts of a store, and what each holds
PARTS = {INSTANCES: "object ids (a label image)", "probabilities": "class scores",
         "objects": "owned objects per chunk (instance models)"}


def _exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return bool(fs.exists(path))


def describe_store(uri: str) -> dict[str, Any]:
    """Source, checksum, model, config hash, classes, its state (complete, or how many chunks
    are left), pyramid levels and the outputs present beside the store."""
    uri = uri.rstrip("/")
    group, meta = open_store_group(uri)
    names = set(group.array_keys()) | set(group.group_keys())
    progress = (np.asarray(array_at(group, "progress")[:]) if "progress" in names
                else None)
    left = int((progress == 0).sum()) if progress is not None else None
    root, image = OutputRoot.of_store(uri)
    beside = {"quick look": f"{uri.removesuffix('.zarr')}.png"}
    if root is not None:  # a store in a segflow root: the files for other tools
        beside.update({what: root.vectors(image, suffix)
                       for what, suffix in VECTOR_SUFFIX.items()})
        beside.update({f"export ({suffix})": root.export(image, fmt)
                       for fmt, suffix in EXPORT_SUFFIX.items()})
    complete = bool(meta.get("complete", False))
    return {
        "store": uri,
        "source": meta.get("source_uri"),
        "checksum": meta.get("source_checksum"),
        "model": meta.get("model"),
        "config_hash": meta.get("config_hash"),
        "complete": complete,
        "state": "complete" if complete else
                 f"incomplete: {left} of {progress.size if progress is not None else '?'} "
                 "chunks left",
        "levels": sorted(int(k) for k in names if k.isdigit()),
        "shape": list(array_at(group, "0").shape) if "0" in names else None,
        "classes": [{"id": c["id"], "name": c["name"], "colour": c.get("colour")}
                    for c in meta.get("classes", [])],
        "outputs": [f"{key}: {what}" for key, what in PARTS.items() if key in group]
                   + [f"{what}: {path}" for what, path in beside.items() if _exists(path)],
    }


def recent_runs(root: str, last: int) -> list[dict[str, Any]]:
    """The latest ``last`` runs recorded under ``root``, newest first."""
    return run_query(root, "SELECT started_at, status, image_id, seconds, model, error "
                           f"FROM runs ORDER BY started_at DESC LIMIT {int(last)}").to_pylist()
