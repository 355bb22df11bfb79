"""What lies in an output root, for a person at a terminal (``segflow show``, ``segflow runs``):
a mask store's provenance and state read from its own attributes, and the latest runs from the
catalog. Nothing here writes."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from segflow.tasks.catalog.query import run_query
from segflow.tasks.errors import UserError, first_line
from segflow.tasks.runtime.storage import filesystem, zarr_options

#: optional arrays of a store, and what each holds
ARRAYS = {"instances": "object ids", "probabilities": "class scores",
          "objects": "owned objects per chunk (instance models)"}


def _exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return bool(fs.exists(path))


def describe_store(uri: str) -> dict[str, Any]:
    """Source, checksum, model, config hash, classes, complete or how many chunks are left,
    pyramid levels and the outputs present beside the store."""
    uri = uri.rstrip("/")
    try:
        group = zarr.open_group(store=uri, mode="r", **zarr_options(uri))
        meta = dict(group.attrs["segflow"])
    except (OSError, KeyError, ValueError, zarr.errors.GroupNotFoundError) as exc:
        raise UserError(uri, f"not a segflow mask store: {first_line(exc)}") from exc
    names = set(group.array_keys()) | set(group.group_keys())
    progress = np.asarray(group["progress"][:]) if "progress" in names else None
    root, _, name = uri.rpartition("/masks/")
    image = name.removesuffix(".zarr")
    beside = {"quick look": f"{uri.removesuffix('.zarr')}.png"}
    if root:  # a store in a segflow root: the files for other tools
        beside.update({"polygons": f"{root}/vectors/{image}.parquet",
                       "QuPath GeoJSON": f"{root}/vectors/{image}.geojson",
                       "export": f"{root}/exports/{image}.tif",
                       "export (NIfTI)": f"{root}/exports/{image}.nii.gz"})
    return {
        "store": uri,
        "source": meta.get("source_uri"),
        "checksum": meta.get("source_checksum"),
        "model": meta.get("model"),
        "config_hash": meta.get("config_hash"),
        "complete": bool(meta.get("complete", False)),
        "chunks_total": int(progress.size) if progress is not None else None,
        "chunks_left": int((progress == 0).sum()) if progress is not None else None,
        "levels": sorted(int(k) for k in names if k.isdigit()),
        "shape": list(group["0"].shape) if "0" in names else None,
        "classes": [{"id": c["id"], "name": c["name"], "colour": c.get("colour")}
                    for c in meta.get("classes", [])],
        "outputs": [f"{key}: {what}" for key, what in ARRAYS.items() if key in names]
                   + [f"{what}: {path}" for what, path in beside.items() if _exists(path)],
    }


def stores_under(root: str) -> list[str]:
    """The mask stores of an output root (``ROOT/masks/*.zarr``), sorted."""
    fs, path = filesystem(f"{root.rstrip('/')}/masks")
    if not fs.exists(path):
        return []
    found = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".zarr"))
    prefix = root.rstrip("/")
    return [f"{prefix}/masks/{p.rsplit('/', 1)[-1]}" for p in found]


def recent_runs(root: str, last: int) -> list[dict[str, Any]]:
    """The latest ``last`` runs recorded under ``root``, newest first."""
    return run_query(root, "SELECT started_at, status, image_id, seconds, model, error "
                           f"FROM runs ORDER BY started_at DESC LIMIT {int(last)}").to_pylist()
