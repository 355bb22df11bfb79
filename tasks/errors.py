"""Two kinds of failure, each meaning one thing, both rendered as ``<source>: <reason>``.

``UserError``: the input, the config or the model is wrong (a corrupt or missing file, a bad key,
weights that do not fit). It fails the same way every time, so nothing retries it.

``TransientError``: the storage or the network hiccuped (S3 503/SlowDown, a reset connection, a
timeout). Prefect retries the stage and the chunk work retries itself on the worker.

Readers turn a library's exception into one of them with ``io_error``: the exception chain is
searched for a network cause; everything else a reader sees (a file that does not decode) is the
user's to fix.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class SegflowError(Exception):
    """A one-line failure about one source: ``<source>: <reason>``. Raise a subclass."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = " ".join(str(reason).split())  # one line, always

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Raised on Dask workers and shipped back to the client: keep both parts across pickling.
        return (type(self), (self.source, self.reason))


class UserError(SegflowError):
    """Bad file, bad config, missing model: fix the input; retrying cannot help."""

    #: set (only) by the CLI on a source that failed before its run: writes its runs row
    record: Callable[[], None]


class TransientError(SegflowError):
    """Storage or network trouble that may pass: retried by Prefect and on the workers."""


#: messages of remote failures that pass: HTTP 5xx/429 and throttling, as S3, GDAL's curl and
#: aiohttp word them
_TRANSIENT_TEXT = re.compile(
    r"SlowDown|reduce your request rate|ServiceUnavailable|Service Unavailable|InternalError|"
    r"RequestTimeout|Throttl|TooManyRequests|HTTP response code: (5\d\d|429)|"
    r"Connection (reset|refused|aborted)|timed out|Server disconnected", re.IGNORECASE)
#: exception classes (by name, so none of these libraries is imported here) that botocore,
#: aiohttp and urllib3 raise for a connection or transfer that failed on the way
_NETWORK_ERRORS = {"HTTPClientError", "ConnectionError", "ClientConnectionError",
                   "ClientPayloadError", "ServerTimeoutError", "ProtocolError"}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ``ClientError`` (its ``response`` dict), else None."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a network or remote-storage hiccup; a missing
    object, a refused permission, missing credentials or a file that does not decode is final."""
    for link in _chain(exc):
        if isinstance(link, TransientError):
            return True
        if isinstance(link, (UserError, FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if isinstance(link, (ConnectionError, TimeoutError)):
            return True
        status = _http_status(link)
        if status is not None:
            return status >= 500 or status == 429
        if _NETWORK_ERRORS & {cls.__name__ for cls in type(link).__mro__}:
            return True
        if _TRANSIENT_TEXT.search(str(link)):
            return True
    return False


def io_error(uri: str, what: str, exc: BaseException) -> SegflowError:
    """The one-line error for a failed read or write of ``uri``: transient or the user's."""
    kind = TransientError if is_transient(exc) else UserError
    # GDAL's "Read failed. See previous exception for details.": say what the previous said
    said = next((first_line(e) for e in _chain(exc) if "previous exception" not in str(e)),
                first_line(exc))
    return kind(uri, f"{what}: {said}")


#: errnos of a write that failed because of where it writes: full, over quota, read-only, denied
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def output_error(root: str, exc: BaseException) -> BaseException:
    """A failure to write under the output ``root`` (disk full, read-only, denied) as a one-line
    ``UserError`` naming the root; any other exception unchanged."""
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in _OUTPUT_ERRNOS:
            return UserError(root, f"cannot write the outputs: {first_line(link)}")
    return exc


def retry_transient(func: Callable[[], T], attempts: int = 3, delay_s: float = 1.0) -> T:
    """``func()``, called again (with doubling delays) while it fails transiently.

    For the chunk work on Dask workers: Dask's own ``retries`` would also repeat user errors.
    """
    for attempt in range(attempts - 1):
        try:
            return func()
        except Exception as exc:
            if not is_transient(exc):
                raise
        time.sleep(delay_s * 2**attempt)
    return func()


def on_worker(func: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``func(*args, **kwargs)`` where a Dask worker runs it: a ``SegflowError`` leaves as
    itself, without its cause and context. Dask ships an error with its whole chain (tblib),
    and a library exception that does not unpickle (rasterio's) would turn it into
    ``Exception("UserError(...)")`` on the client."""
    try:
        return func(*args, **kwargs)
    except SegflowError as exc:
        error = type(exc)(exc.source, exc.reason)
    raise error  # outside the handler: no __context__ either


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, for one-line errors."""
    if isinstance(exc, SegflowError):
        return exc.reason
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
