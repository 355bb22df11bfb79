"""Running the chunks of one image on the cluster: submit the missing ones, show progress,
and stop everything at the first failure, so a bad file costs one chunk, not the whole image.
"""

from __future__ import annotations

import math
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from types import TracebackType

from distributed import Client, Future
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from segflow.tasks.errors import SegflowError, io_error
from segflow.tasks.mask.chunk import segment_lane
from segflow.tasks.mask.lease import check_held
from segflow.tasks.mask.store import DONE_BACKGROUND, DONE_SKIPPED, DONE_WRITTEN, MaskStore
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.cluster import broadcast, inference_resources, windowed
from segflow.tasks.runtime.crash import crash_point
from segflow.tasks.runtime.zarr_nodes import read_cells

#: lanes in flight per worker thread: enough to keep every thread fed, few enough that a
#: 100-gigapixel plan never sits in the client or the scheduler at once
WINDOW = 3


#: without a terminal (cron, CI, a log file), one plain line each time this share is passed
LOG_EVERY = 0.1


class RateColumn(ProgressColumn):
    """Cells per second in millions (Mpx/s, or Mvoxel/s for volumes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed / 1e6:.2f} M{task.fields['unit']}/s")


class ChunkProgress:
    """A bar in cells (so its rate and ETA are Mpx/s and time left) labelled with chunks done;
    on a terminal only: elsewhere a line per ``LOG_EVERY`` of the image, and at the end, on
    stdout."""

    def __init__(self, name: str, cells: tuple[int, int], chunks: tuple[int, int],
                 unit: str) -> None:
        """``cells`` and ``chunks``: (done already, total)."""
        self.console = Console()
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.fields[chunks]}"), RateColumn(),
                            TimeRemainingColumn(), TimeElapsedColumn(), console=self.console,
                            transient=True, disable=not self.console.is_terminal)
        self.name, self.unit = name, unit
        (self.cells, self.total), (self.chunks, self.total_chunks) = cells, chunks
        self.logged, self.clock = self.cells / max(1, self.total), 0.0

    def __enter__(self) -> ChunkProgress:
        self.bar.__enter__()
        self.clock = time.perf_counter()
        self.task = self.bar.add_task(self.name, total=self.total, completed=self.cells,
                                      unit=self.unit, chunks=self._chunks())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.bar.__exit__(exc_type, exc, traceback)

    def _chunks(self) -> str:
        return f"{self.chunks}/{self.total_chunks} chunks"

    def advance(self, cells: int, chunks: int) -> None:
        self.cells, self.chunks = self.cells + cells, self.chunks + chunks
        self.bar.update(self.task, advance=cells, chunks=self._chunks())
        share = self.cells / max(1, self.total)
        if (not self.console.is_terminal and self.total_chunks > 1
                and (share >= self.logged + LOG_EVERY or self.cells == self.total)):
            self.logged = share
            rate = self.cells / max(time.perf_counter() - self.clock, 1e-9) / 1e6
            print(f"{self.name}: {share:.0%} ({self._chunks()}), {rate:.2f} M{self.unit}/s",
                  flush=True)


def _cells(chunk: Chunk) -> int:
    return math.prod(s.stop - s.start for s in chunk.core)


def _index(chunk: Chunk) -> str:
    return "-".join(map(str, chunk.index))


def lanes(todo: list[Chunk], threads: int, longest: int = 8) -> list[list[Chunk]]:
    """``todo`` cut into runs of neighbouring chunks (row-major order), about four per worker
    thread so that every thread stays busy to the end, at most ``longest`` chunks each."""
    size = max(1, min(longest, len(todo) // max(1, 4 * threads)))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def run_chunks(client: Client, job: Job, store: MaskStore, todo: list[Chunk]) -> None:
    """Segment ``todo`` chunks of a fitted job into ``store`` on the cluster.

    The model travels to every worker once; chunks go out in lanes (tasks/mask/chunk.py) whose
    reads overlap their inference, and to GPU workers when the model can use one. Lanes are
    submitted through a window of ``WINDOW`` per worker thread, so the client's memory and the
    scheduler's graph stay the same size for any image. The first failure cancels the rest and
    is raised as one line; so is a lost lease (mask/lease.py).
    """
    total = len(job.plan.chunks)
    threads = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
    model = broadcast(client, job.model)
    groups = lanes(todo, threads)
    resources = inference_resources(client, job.model.accelerated)

    # keys name the image for the dashboard, and this call: the same image segmented into two
    # roots at once (or twice, after a failure) must never share a task
    token = uuid.uuid4().hex[:8]

    def submit(group: list[Chunk]) -> Future:
        return client.submit(segment_lane, group, [job.known(c) for c in group],
                             source=job.reader, model=model, store=store,
                             skip_empty=job.config.tiling.skip_empty, resources=resources,
                             key=f"chunk-{job.image_id}-{token}-{_index(group[0])}")

    # the bar starts where a resumed run stands
    cells = math.prod(job.reader.spatial_shape)
    unit = "voxel" if len(job.reader.spatial_shape) == 3 else "px"
    progress = ChunkProgress(job.image_id, (cells - sum(map(_cells, todo)), cells),
                             (total - len(todo), total), unit)
    with progress as bar, closing(windowed(client, submit, groups,
                                           WINDOW * max(1, threads))) as done:
        try:
            for group, _ in done:
                check_held(store.uri, look=False)  # a run that lost its lease stops writing
                bar.advance(sum(_cells(c) for c in group), len(group))
                crash_point("chunks")
        except SegflowError:
            raise
        except Exception as exc:
            raise io_error(job.source, "chunk failed", exc) from exc


@dataclass(frozen=True)
class Tally:
    """What became of an image's chunks: each is counted once."""

    nodata: int  # skipped: all nodata, nothing written
    background: int  # skipped: no tissue on the slide thumbnail, written as glass unread
    computed: int  # segmented by the model in this run
    recorded: bool  # every chunk of the plan is recorded done

    @property
    def skipped(self) -> int:
        return self.nodata + self.background


def tally(store: MaskStore, todo: list[Chunk]) -> Tally:
    """Count the chunks from the store's progress flags; ``todo``: those this run took on."""
    flags = read_cells(store.progress(), slice(None))
    mine = [flags[c.index] for c in todo]
    return Tally(nodata=int((flags == DONE_SKIPPED).sum()),
                 background=int((flags == DONE_BACKGROUND).sum()),
                 computed=sum(int(f == DONE_WRITTEN) for f in mine),
                 recorded=bool((flags != 0).all()))
