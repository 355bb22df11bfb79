"""The per-chunk work a Dask worker does: read chunk + halo, predict the core, write it.

The worker reads its own pixels from the source and writes its own shard, so image data never
passes through the client. A task is a *lane* of neighbouring chunks run as a pipeline: the
next chunk is read (and decoded) while the current one is inferred and the previous one
written, so the model never waits on storage; at most three chunks are in memory per lane.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from segflow.tasks.errors import io_error, on_worker, retry_transient
from segflow.tasks.mask.owned import segment_objects
from segflow.tasks.mask.store import DONE_BACKGROUND, DONE_SKIPPED, MaskStore
from segflow.tasks.models.base import SegmentationModel  # no torch: models import lazily
from segflow.tasks.models.instance import InstanceModel
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.plan.job import BACKGROUND, NODATA
from segflow.tasks.sources.base import SourceBase


@dataclass(frozen=True)
class Lane:
    """What a lane's three stages share."""

    source: SourceBase
    model: SegmentationModel
    store: MaskStore
    skip_empty: bool

    def read(self, chunk: Chunk, known: str | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The chunk's pixels and valid mask, or None when it is skipped (written here).

        ``known`` (from the plan, before any pixel is read): ``BACKGROUND`` (no tissue on the
        slide thumbnail: class 0) or ``NODATA`` (every block of it unwritten in the file)."""
        if known == BACKGROUND:
            shape = tuple(s.stop - s.start for s in chunk.core)
            scores = None
            if self.store.scores:  # glass is class 0 for certain
                scores = np.zeros((self.store.probabilities().shape[0], *shape),
                                  self.store.scores)
                scores[0] = 255 if self.store.scores == "uint8" else 1
            self.store.write_chunk(chunk, np.zeros(shape, self.store.dtype), DONE_BACKGROUND,
                                   scores=scores)
            return None
        if known == NODATA:
            self.store.write_chunk(chunk, np.empty(0, self.store.dtype), DONE_SKIPPED)
            return None
        pixels, valid = retry_transient(lambda: self.source.read(chunk.read))
        if self.skip_empty and not valid[chunk.crop].any():  # all nodata: left as nodata
            self.store.write_chunk(chunk, np.empty(0, self.store.dtype), DONE_SKIPPED)
            return None
        return pixels, valid

    def infer(self, chunk: Chunk, pixels: np.ndarray, valid: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """Class ids of the chunk's core and, with ``output.probabilities``, its scores in the
        store's dtype (uint8: 0-255 rounded; nodata cells 0 for every class)."""
        inside = valid[chunk.crop]
        scores = None
        if isinstance(self.model, InstanceModel):  # owned objects go to the store whole
            labels = segment_objects(self.model, chunk, pixels, valid, self.source.spatial_shape,
                                     self.store, self.source.uri)
        elif self.store.scores:
            labels, probs = self.model.predict_scores(pixels, valid, chunk.crop)
            probs[:, ~inside] = 0
            scores = (np.rint(probs * 255).astype(np.uint8) if self.store.scores == "uint8"
                      else probs.astype(self.store.scores))
        else:
            labels = self.model.predict_at(pixels, valid, chunk.crop, chunk.read)
        labels = labels.astype(self.store.dtype, copy=False)
        labels[~inside] = self.store.nodata
        return labels, scores

    def write(self, chunk: Chunk, labels: np.ndarray, scores: np.ndarray | None) -> None:
        try:
            retry_transient(lambda: self.store.write_chunk(chunk, labels, scores=scores))
        except OSError as exc:  # a full disk or a refused write: the store's, not the source's
            raise io_error(self.store.uri, "cannot write the mask", exc) from exc


def segment_lane(chunks: list[Chunk], known: list[str | None], source: SourceBase,
                 model: SegmentationModel, store: MaskStore, skip_empty: bool) -> int:
    """Segment ``chunks`` in order and record each in the store; returns how many were skipped
    (no tissue on the slide thumbnail, or all nodata).

    Idempotent, so a retry of the whole lane is safe: storage hiccups are retried per read
    and write, a bad file is not.
    """
    return on_worker(_run_lane, Lane(source, model, store, skip_empty), chunks, known)


def _run_lane(lane: Lane, chunks: list[Chunk], known: list[str | None]) -> int:
    skipped = 0
    with ThreadPoolExecutor(1, "segflow-read") as reader, \
            ThreadPoolExecutor(1, "segflow-write") as writer:
        def read(i: int) -> Future[tuple[np.ndarray, np.ndarray] | None]:
            return reader.submit(lane.read, chunks[i], known[i])

        ahead = read(0) if chunks else None
        written: Future[None] | None = None
        for i, chunk in enumerate(chunks):
            assert ahead is not None
            data = ahead.result()
            ahead = read(i + 1) if i + 1 < len(chunks) else None
            if data is None:
                skipped += 1
                continue
            labels, scores = lane.infer(chunk, *data)
            del data
            if written is not None:
                written.result()  # at most one write in flight: memory stays bounded
            written = writer.submit(lane.write, chunk, labels, scores)
        if written is not None:
            written.result()
    return skipped

