"""Running the chunks of one image on the cluster: submit the missing ones, show progress,
and stop everything at the first failure, so a bad file costs one chunk, not the whole image.
"""

from __future__ import annotations

from distributed import Client, as_completed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from segflow.tasks.errors import SegflowError, io_error
from segflow.tasks.mask.chunk import segment_lane
from segflow.tasks.mask.store import DONE_SKIPPED, MaskStore
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.cluster import inference_resources


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=True)


def lanes(todo: list[Chunk], threads: int, longest: int = 8) -> list[list[Chunk]]:
    """``todo`` cut into runs of neighbouring chunks (row-major order), about four per worker
    thread so that every thread stays busy to the end, at most ``longest`` chunks each."""
    size = max(1, min(longest, len(todo) // max(1, 4 * threads)))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def run_chunks(client: Client, job: Job, store: MaskStore, todo: list[Chunk]) -> None:
    """Segment ``todo`` chunks of a fitted job into ``store`` on the cluster.

    The model travels to every worker once; chunks go out in lanes (tasks/mask/chunk.py) whose
    reads overlap their inference, and to GPU workers when the model can use one. The first
    failure cancels the rest and is raised as one line.
    """
    total = len(job.plan.chunks)
    threads = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
    [model] = client.scatter([job.model], broadcast=True, hash=False)
    groups = lanes(todo, threads)
    keys = [f"chunk-{job.image_id}-{'-'.join(map(str, g[0].index))}" for g in groups]
    flags = [[c.index in job.background for c in g] for g in groups]
    futures = client.map(segment_lane, groups, flags, source=job.reader, model=model,
                         store=store, skip_empty=job.config.tiling.skip_empty, key=keys,
                         resources=inference_resources(client, job.model.accelerated))
    size = {f.key: len(g) for f, g in zip(futures, groups)}
    with _progress() as bar:
        progress = bar.add_task(job.image_id, total=total, completed=total - len(todo))
        for future in as_completed(futures, loop=client.loop):
            try:
                future.result()
            except SegflowError:
                client.cancel(futures)
                raise
            except Exception as exc:
                client.cancel(futures)
                raise io_error(job.source, "chunk failed", exc) from exc
            bar.advance(progress, size[future.key])


def count_skipped(store: MaskStore) -> tuple[int, bool]:
    """Chunks recorded as skipped, and whether every chunk is recorded at all."""
    flags = store.progress()[:]
    return int((flags == DONE_SKIPPED).sum()), bool((flags != 0).all())
