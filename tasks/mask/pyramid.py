"""OME-Zarr (NGFF 0.5) multiscale levels for a finished mask, so napari, QuPath or neuroglancer
open a giant mask at any zoom.

Each level halves the previous one by nearest-neighbour sampling (class ids must never be
averaged). Levels are computed by Dask on the workers, one task per output chunk, reading only
the level below: memory is bounded by a chunk, never by the mask.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import zarr
from distributed import Client

from segflow.tasks.colours import rgba
from segflow.tasks.config import ClassSpec
from segflow.tasks.runtime.storage import zarr_options
from segflow.tasks.runtime.zarr_nodes import array_at, dimension_names, group_at

MIN_SIDE = 256  # stop when the largest side of a level is at most this


def level_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes of levels 0, 1, ...: each the ceiling half of the last, until small enough."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) > MIN_SIDE:
        shapes.append(tuple((n + 1) // 2 for n in shapes[-1]))
    return shapes


def build_levels(uri: str, client: Client, path: str = "") -> int:
    """Write levels 1.. of the multiscale image at ``path`` in the store at ``uri`` (the class
    mask at the root; ``labels/instances``) from its level 0; returns how many levels exist."""
    group = zarr.open_group(store=uri, mode="r+", **zarr_options(uri))
    group = group_at(group, path) if path else group
    base = array_at(group, "0")
    # Every level has level 0's layout (its chunks, and its shards when it is sharded): a
    # reader that cannot read shards (GDAL before 3.13) then sees no level at all, rather
    # than offering an unsharded coarser level in place of the full-resolution mask.
    inner, shards = base.chunks, base.shards
    shapes = level_shapes(base.shape)
    for level in range(1, len(shapes)):
        source = da.from_zarr(array_at(group, str(level - 1)))
        target = group.create_array(str(level), shape=shapes[level], dtype=base.dtype,
                                    fill_value=base.fill_value, chunks=inner, shards=shards,
                                    dimension_names=dimension_names(base),
                                    overwrite=True)
        step = (slice(None, None, 2),) * base.ndim
        # One Dask chunk per Zarr object (shard, or chunk) of the target: no two tasks write
        # one object.
        halved = source[step].rechunk(shards or inner)
        # dask types targets as numpy-like arrays; it needs only __setitem__, which zarr's has
        client.compute(da.store(halved, target, lock=False, compute=False),  # type: ignore[arg-type]
                       sync=True)
    return len(shapes)


def ome_metadata(dims: tuple[str, ...], units: str | None, cell_size: list[float],
                 levels: int, classes: list[ClassSpec] | None, name: str,
                 origin: list[float] | None = None) -> dict[str, Any]:
    """The ``ome`` attribute of a multiscale label image (NGFF 0.5): the class mask with each
    class's colour and name (``properties``, which napari shows), or, ``classes`` None, an
    instance image (ids have no fixed colours). The store holds no image, so no
    ``source``. ``origin``: the world position of cell 0 (``SpatialRef.origin``)."""
    axes = [{"name": d, "type": "space", **({"unit": units} if units else {})} for d in dims]
    shift = [float(v) for v in origin] if origin is not None else [0.0] * len(cell_size)
    datasets = [{"path": str(level),
                 "coordinateTransformations": [
                     {"type": "scale", "scale": [s * 2 ** level for s in cell_size]},
                     # level n keeps every 2^n-th cell from index 0: cell 0 stays put
                     {"type": "translation", "translation": shift}]}
                for level in range(levels)]
    label: dict[str, Any] = {}
    if classes is not None:
        label = {"colors": [{"label-value": c.id, "rgba": rgba(c.colour)} for c in classes],
                 "properties": [{"label-value": c.id, "class": c.name} for c in classes]}
    return {"version": "0.5",
            "multiscales": [{"name": name, "axes": axes, "datasets": datasets,
                             "type": "nearest (every 2nd cell)"}],
            "image-label": label}

