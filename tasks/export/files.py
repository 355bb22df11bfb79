"""Export files appear whole or not at all: each is written to a temporary local file, then
renamed into place (local roots) or uploaded in one PUT (object stores). A crash mid-write
leaves only a ``.partial`` file, never a truncated export under its final name."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segflow.tasks.runtime.storage import filesystem, is_local


def export_uri(root: str, folder: str, name: str) -> str:
    """``ROOT/<folder>/<name>``."""
    return f"{root.rstrip('/')}/{folder}/{name}"


@contextmanager
def staged(uri: str) -> Iterator[Path]:
    """A local path to write ``uri``'s content to; it becomes ``uri`` when the block ends
    without an error, and is removed otherwise."""
    fs, path = filesystem(uri)
    if is_local(uri):
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            yield work
            os.replace(work, final)
        finally:
            work.unlink(missing_ok=True)
        return
    folder = Path(tempfile.mkdtemp(prefix="segflow-export-"))
    try:
        work = folder / Path(path).name
        yield work
        fs.put_file(str(work), path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

