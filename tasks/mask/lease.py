"""One writer per mask: a lease on ``ROOT/masks/<image_id>.zarr``, held from before the store is
opened or created until the run has measured it.

The lease lives beside the store, in ``<image_id>.zarr.lease/``, as numbered claim objects
(``000000000007.json``: holder, host, pid, expiry). A claim is created atomically or not at all:
``O_EXCL`` semantics locally (a hard link of a fully written temporary file, so nobody ever
reads half a claim), a conditional PUT (``If-None-Match: *``) on S3. Claims are numbered so that
taking over a lapsed one is also a single atomic create (of the next number), and the rule for
who holds the lease is simple: the creator of the highest-numbered claim, while it renews it.

A holder renews its claim (rewrites the expiry) from a thread every quarter of its lifetime; a
crashed holder stops renewing and its claim lapses after ``output.lease_seconds`` (at once when
it ran on this host and its process is gone). A holder that finds a higher claim than its own
(it stalled past its expiry and was taken over) has lost the lease and stops writing.

Written here because neither zarr nor fsspec has a lease: zarr leaves concurrent writers to the
application, and fsspec gives only the atomic create (``pipe_file(mode="create")`` on S3).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from segflow.tasks.errors import TransientError, UserError, io_error
from segflow.tasks.runtime.storage import filesystem

SUFFIX = ".lease"
_HELD: dict[str, Lease] = {}  # store URI -> this process's lease on it
_HELD_LOCK = threading.Lock()


def _claim_name(number: int) -> str:
    return f"{number:012d}.json"


def _alive_here(claim: dict[str, Any]) -> bool:
    """False when the claim was made on this host by a process that no longer runs."""
    if claim.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


def lapsed(claim: dict[str, Any] | None, now: float | None = None) -> bool:
    """True when a claim no longer holds: released, expired, or its process is gone."""
    if claim is None:
        return True
    if claim.get("released"):
        return True
    return float(claim.get("expires", 0)) < (now or time.time()) or not _alive_here(claim)


def describe(claim: dict[str, Any]) -> str:
    """Who holds a claim, for the one-line error of a run that gave up waiting."""
    left = max(0.0, float(claim.get("expires", 0)) - time.time())
    return (f"run {claim.get('run', '?')} on {claim.get('host', '?')} "
            f"(pid {claim.get('pid', '?')}, lease renewed until {left:.0f} s from now)")


@dataclass
class Lease:
    """This process's claim on one store; a thread renews it until ``release``."""

    store_uri: str
    seconds: float
    run: str
    number: int = -1
    lost: bool = False

    def __post_init__(self) -> None:
        self.fs, self.folder = filesystem(self.store_uri.rstrip("/") + SUFFIX)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- the claim objects -------------------------------------------------------------
    def _numbers(self) -> list[int]:
        self.fs.invalidate_cache(self.folder)
        try:
            names = self.fs.ls(self.folder, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            stem = name.rsplit("/", 1)[-1].removesuffix(".json")
            if stem.isdigit():
                found.append(int(stem))
        return sorted(found)

    def _read(self, number: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(f"{self.folder}/{_claim_name(number)}"))
        except FileNotFoundError:
            return None
        except ValueError:  # not JSON: someone else's file; treat as a live claim for one ttl
            return {"run": "unknown", "expires": time.time() + self.seconds}

    def _body(self, released: bool = False) -> bytes:
        return json.dumps({"run": self.run, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + self.seconds, "seconds": self.seconds,
                           "released": released}).encode()

    def _partial(self, body: bytes) -> str:
        """A hidden, fully written temporary file in the lease folder, to be published whole."""
        partial = f"{self.folder}/.{uuid.uuid4().hex}.partial"
        with open(partial, "wb") as fh:
            fh.write(body)
        return partial

    def _create(self, number: int) -> bool:
        """Create claim ``number`` atomically; False when it already exists."""
        path = f"{self.folder}/{_claim_name(number)}"
        if isinstance(self.fs, LocalFileSystem):
            os.makedirs(self.folder, exist_ok=True)
            partial = self._partial(self._body())
            try:
                os.link(partial, path)  # fails if the name exists: O_EXCL for a whole file
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(partial)
        try:  # S3: a conditional PUT (If-None-Match: *); other stores: fsspec's best effort
            self.fs.pipe_file(path, self._body(), mode="create")
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # 409 ConditionalRequestConflict: a concurrent create won
            if "Conditional" in str(exc) or "Precondition" in str(exc):
                return False
            raise

    def _write(self, released: bool = False) -> None:
        """Rewrite our own claim (renewal or release): nobody else writes this number."""
        path = f"{self.folder}/{_claim_name(self.number)}"
        body = self._body(released)
        if isinstance(self.fs, LocalFileSystem):
            os.replace(self._partial(body), path)
        else:
            self.fs.pipe_file(path, body)

    # -- taking, keeping and giving back ---------------------------------------------
    def try_acquire(self) -> dict[str, Any] | None:
        """One attempt: None when the lease is now ours, else the live claim that holds it."""
        numbers = self._numbers()
        top = numbers[-1] if numbers else -1
        claim = self._read(top) if top >= 0 else None
        if not lapsed(claim):
            return claim
        if not self._create(top + 1):
            return self._read(top + 1) or {"run": "unknown", "expires": time.time()}
        newer = [n for n in self._numbers() if n > top + 1]
        if newer:  # we acted on a stale listing: a later claim exists, back out
            self.fs.rm_file(f"{self.folder}/{_claim_name(top + 1)}")
            return self._read(newer[-1]) or {"run": "unknown", "expires": time.time()}
        self.number = top + 1
        for old in numbers:  # lapsed claims are history now
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(f"{self.folder}/{_claim_name(old)}")
        return None

    def acquire(self, wait: float, poll: float = 0.2) -> None:
        """Take the lease, waiting up to ``wait`` seconds for another run to finish with it,
        looking again after ``poll`` seconds, then 1.5 times longer each time (at most 2 s)."""
        deadline = time.monotonic() + wait
        delay = poll
        while True:
            try:
                holder = self.try_acquire()
            except OSError as exc:
                raise io_error(self.store_uri, "cannot take the write lease", exc) from exc
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise UserError(self.store_uri, f"another run is writing this mask: "
                                f"{describe(holder)}; waited {wait:.0f} s (--wait SECONDS)")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2.0, delay * 1.5)
        self._renewer = threading.Thread(target=self._renew, daemon=True,
                                         name=f"lease-{self.store_uri}")
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                if any(n > self.number for n in self._numbers()):
                    self.lost = True
                    return
                self._write()
            except OSError:
                continue  # a missed renewal is not fatal: the next one may succeed

    def check(self, look: bool = True) -> None:
        """Raise when the lease was lost (this run stalled past its expiry and was taken over);
        ``look``: list the claims now, else trust the renewing thread's last look."""
        if self.lost or (look and any(n > self.number for n in self._numbers())):
            self.lost = True
            raise TransientError(self.store_uri, "lost the write lease to another run "
                                 "(this run stalled past its expiry); re-run to resume")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.number >= 0 and not self.lost:
            try:
                self.fs.rm_file(f"{self.folder}/{_claim_name(self.number)}")
            except FileNotFoundError:
                pass
            except OSError:  # cannot delete: mark it released so nobody waits for its expiry
                self._write(released=True)


@contextmanager
def hold(store_uri: str, run: str, seconds: float, wait: float,
         poll: float = 0.2) -> Iterator[Lease]:
    """Hold the lease on ``store_uri`` for the ``with`` block (see the module docstring);
    ``poll``: the first wait between attempts (short for leases held for milliseconds)."""
    lease = Lease(store_uri=store_uri, seconds=seconds, run=run)
    lease.acquire(wait, poll)
    with _HELD_LOCK:
        _HELD[store_uri] = lease
    try:
        yield lease
    finally:
        with _HELD_LOCK:
            _HELD.pop(store_uri, None)
        lease.release()


def check_held(store_uri: str, look: bool = True) -> None:
    """Raise unless this process holds the lease on ``store_uri``: no store is created, resumed
    or marked complete by a run that does not own it (``look``: as ``Lease.check``)."""
    with _HELD_LOCK:
        lease = _HELD.get(store_uri)
    if lease is None:
        raise RuntimeError(f"{store_uri}: written without its lease (segflow.tasks.mask.lease)")
    lease.check(look)

