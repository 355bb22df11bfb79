"""One exception type for everything a user can cause: a bad file, a bad config, a missing model."""

from __future__ import annotations


class SegflowError(Exception):
    """A user-facing failure about one source: rendered as ``<source>: <reason>`` on one line."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = " ".join(str(reason).split())  # one line, always

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Raised on Dask workers and shipped back to the client: keep both parts across pickling.
        return (type(self), (self.source, self.reason))


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, for one-line errors."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
