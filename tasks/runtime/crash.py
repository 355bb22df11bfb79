"""Named crash points, for proving that a run killed anywhere resumes to the same result.

``SEGFLOW_CRASH_AT=<point>`` makes the process kill itself with SIGKILL when it reaches that
point: no ``finally``, no ``atexit``, exactly what ``kill -9`` or an out-of-memory kill does at
that moment. Unset (always, outside the kill-anywhere test), a crash point is one dictionary
lookup. The points, in the order a run passes them: open, fit, chunks, pyramid, quicklook,
measure, export, catalog, publish.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    """Die here, now, when ``SEGFLOW_CRASH_AT`` names this point."""
    if os.environ.get("SEGFLOW_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
