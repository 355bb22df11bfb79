"""Unit tests of single modules, at paths mirroring the module's (tasks/models/histogram.py is
tests/tasks/models/test_histogram.py): small arrays, no flow, store or cluster, each checked
against an independent computation (NumPy, scikit-image, the standard library)."""

from __future__ import annotations

from typing import Any

import dask
import pytest


class SyncClient:
    """Stands in for a ``distributed.Client`` where a function only asks it to compute: the
    graph runs in this thread (``scheduler="sync"``)."""

    def compute(self, collections: Any, sync: bool = True) -> Any:
        if isinstance(collections, (list, tuple)):
            return list(dask.compute(*collections, scheduler="sync"))
        return dask.compute(collections, scheduler="sync")[0]


@pytest.fixture
def sync_client() -> SyncClient:
    return SyncClient()
