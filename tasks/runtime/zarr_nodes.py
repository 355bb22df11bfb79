"""Typed access to Zarr nodes. zarr 3 types ``group[name]`` as array-or-group, every read as
array-or-scalar and every attribute value as any JSON; segflow's stores have a known layout, so
these helpers narrow (or, where no check is possible, cast) once, for the type checker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import zarr
from zarr.core.metadata import ArrayV3Metadata


def array_at(group: zarr.Group, path: str) -> zarr.Array:
    """The array at ``path`` under ``group``; a TypeError when a group lies there instead."""
    node = group[path]
    if not isinstance(node, zarr.Array):
        raise TypeError(f"{path!r} in {group.store_path} is a Zarr group, not an array")
    return node


def group_at(group: zarr.Group, path: str) -> zarr.Group:
    """The group at ``path`` under ``group``; a TypeError when an array lies there instead."""
    node = group[path]
    if not isinstance(node, zarr.Group):
        raise TypeError(f"{path!r} in {group.store_path} is a Zarr array, not a group")
    return node


def read_cells(array: zarr.Array, index: Any) -> np.ndarray:
    """``array[index]`` for a selection of cells (slices, index arrays), not of one cell: an
    array, which zarr types as array-or-scalar."""
    return cast(np.ndarray, array[index])


def dimension_names(array: zarr.Array) -> tuple[str | None, ...] | None:
    """The array's dimension names (Zarr v3 metadata; a v2 array has none)."""
    meta = array.metadata
    return meta.dimension_names if isinstance(meta, ArrayV3Metadata) else None


def attributes(node: zarr.Array | zarr.Group) -> Mapping[str, Any]:
    """``node.attrs`` to read from: values are JSON of the shape the writer gave them, which zarr
    types as any JSON value."""
    return cast(Mapping[str, Any], node.attrs)
