"""tasks/runtime/crash.py: a named crash point kills its process with SIGKILL, only when
``SEGFLOW_CRASH_AT`` names it (checked in child processes, by their exit signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

CODE = ("from segflow.tasks.runtime.crash import crash_point\n"
        "import sys\n"
        "crash_point('fit')\n"
        "print('past fit', flush=True)\n"
        "crash_point('chunks')\n"
        "print('past chunks', flush=True)\n")


def _run(point: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SEGFLOW_CRASH_AT"}
    if point is not None:
        env["SEGFLOW_CRASH_AT"] = point
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_named_point_kills_with_sigkill_and_no_other():
    done = _run("chunks")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.splitlines() == ["past fit"]  # killed at chunks, not at fit


def test_unset_or_another_name_does_nothing():
    for point in (None, "publish"):
        done = _run(point)
        assert done.returncode == 0 and done.stdout.splitlines() == ["past fit", "past chunks"]
