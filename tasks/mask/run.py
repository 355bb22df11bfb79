"""Running the chunks of one image on the cluster: submit the missing ones, show progress,
and stop everything at the first failure, so a bad file costs one chunk, not the whole image.
"""

from __future__ import annotations

import uuid
from contextlib import closing

from distributed import Client, Future
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from segflow.tasks.errors import SegflowError, io_error
from segflow.tasks.mask.chunk import segment_lane
from segflow.tasks.mask.lease import check_held
from segflow.tasks.mask.store import DONE_SKIPPED, MaskStore
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.cluster import broadcast, inference_resources, windowed
from segflow.tasks.runtime.crash import crash_point

#: lanes in flight per worker thread: enough to keep every thread fed, few enough that a
#: 100-gigapixel plan never sits in the client or the scheduler at once
WINDOW = 3


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=True)


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

    with _progress() as bar, closing(windowed(client, submit, groups,
                                              WINDOW * max(1, threads))) as done:
        progress = bar.add_task(job.image_id, total=total, completed=total - len(todo))
        try:
            for group, _ in done:
                check_held(store.uri, look=False)  # a run that lost its lease stops writing
                bar.advance(progress, len(group))
                crash_point("chunks")
        except SegflowError:
            raise
        except Exception as exc:
            raise io_error(job.source, "chunk failed", exc) from exc


def count_skipped(store: MaskStore) -> tuple[int, bool]:
    """Chunks recorded as skipped, and whether every chunk is recorded at all."""
    flags = store.progress()[:]
    return int((flags == DONE_SKIPPED).sum()), bool((flags != 0).all())
