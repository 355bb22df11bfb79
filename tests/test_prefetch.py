"""A lane of chunks runs as a pipeline (read ahead, infer, write behind): the mask is the one
chunk-by-chunk work gives, and no more than three chunks are ever held at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import rasterio
import zarr

from segflow.tasks.config import load_config
from segflow.tasks.mask.chunk import segment_lane
from segflow.tasks.mask.lease import hold
from segflow.tasks.mask.run import lanes
from segflow.tasks.mask.store import DONE_WRITTEN, open_job_store
from segflow.tasks.plan.job import plan_job
from tests.conftest import normalized


class Held:
    """Counts chunks read but not yet written (or skipped), and the most ever held."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.now += n
            self.most = max(self.most, self.now)


class SlowSource:
    """The real reader, 20 ms slower per read (a remote store), counting what it hands out."""

    def __init__(self, inner: Any, held: Held) -> None:
        self.inner, self.held = inner, held

    def read(self, window: Any) -> Any:
        time.sleep(0.02)
        data = self.inner.read(window)
        self.held.add(1)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CountingStore:
    """The real store, 50 ms slower per write, counting what it takes back."""

    def __init__(self, inner: Any, held: Held) -> None:
        self.inner, self.held = inner, held

    def write_chunk(self, chunk: Any, labels: np.ndarray, done: int = DONE_WRITTEN,
                    scores: np.ndarray | None = None) -> None:
        time.sleep(0.05)  # a slow store: the next read lands before this write ends
        self.inner.write_chunk(chunk, labels, done, scores=scores)
        if labels.size or done != DONE_WRITTEN:
            self.held.add(-1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _mask(rgb_tif, dilated_model, root, lane_size: int) -> tuple[np.ndarray, int]:
    """The mask of the RGB scene in 20 chunks of 192 px (standardised input: several
    classes), lane by lane or chunk by chunk, and the most chunks held at once."""
    with rasterio.open(rgb_tif) as src:
        data, valid = src.read(), src.dataset_mask() > 0
    cfg = load_config(overrides=["model.kind=torchscript", f"model.weights={dilated_model}",
                                 "model.params.receptive_field=7", "tiling.chunk=192",
                                 "tiling.halo=8", normalized(data, valid)])
    job = plan_job(str(rgb_tif), str(root), cfg)
    with hold(job.store_uri, "test", seconds=60, wait=0):
        store, _, _ = open_job_store(job)
    held = Held()
    source, counted = SlowSource(job.reader, held), CountingStore(store, held)
    for lane in lanes(job.plan.chunks, threads=1, longest=lane_size) if lane_size > 1 else \
            [[c] for c in job.plan.chunks]:
        segment_lane(lane, [None] * len(lane), source, job.model, counted, skip_empty=True)
    return zarr.open_group(job.store_uri, mode="r")["0"][:], held.most


def test_lane_pipeline_gives_the_chunk_by_chunk_mask_holding_at_most_three_chunks(
        rgb_tif, dilated_model, tmp_path):
    one_by_one, most_alone = _mask(rgb_tif, dilated_model, tmp_path / "single", 1)
    piped, most_piped = _mask(rgb_tif, dilated_model, tmp_path / "lanes", 8)
    assert len(np.unique(one_by_one[one_by_one != 255])) >= 2  # one class would prove nothing
    np.testing.assert_array_equal(piped, one_by_one)
    assert most_alone == 1
    assert 2 <= most_piped <= 3  # it did read ahead, and no further than one chunk
