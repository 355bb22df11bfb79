"""segflow: segment images too big for one model call, chunk by chunk, into Zarr and a catalog.

The public API, for notebooks and scripts (the CLI ``segflow`` calls the same functions)::

    import segflow
    cfg = segflow.load_config("configs/landcover.yaml", ["tiling.chunk=1024"])
    run = segflow.segment_image("scene.tif", "results", cfg.model_dump(mode="json"))
    rows = segflow.segment_batch("s3://bucket/scenes/", "s3://bucket/results")
    df = segflow.query_frame("results", "select * from class_stats")
    mask = segflow.open_mask("results")   # xarray, lazy, in the image's CRS / µm / mm

The pipeline lives in two sub-packages: ``segflow.flows`` (Prefect flows and the CLI, which
compose) and ``segflow.tasks`` (the stages that do the work). Names are imported on first use,
so ``import segflow`` stays cheap (no Prefect, Dask or torch until a function is called).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segflow.flows.api import segment_image
    from segflow.flows.batch import segment_batch
    from segflow.tasks.catalog.query import query_frame
    from segflow.tasks.config import load_config
    from segflow.tasks.export.dataarray import open_mask

__all__ = ["segment_image", "segment_batch", "query_frame", "load_config", "open_mask"]
try:
    __version__ = version("segflow")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "unknown"

_WHERE = {
    "segment_image": "segflow.flows.api",
    "segment_batch": "segflow.flows.batch",
    "query_frame": "segflow.tasks.catalog.query",
    "load_config": "segflow.tasks.config",
    "open_mask": "segflow.tasks.export.dataarray",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'segflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
