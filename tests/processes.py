"""``segflow`` commands in processes of their own, forked from a server process that has
already imported segflow: for tests of what two runs at once or a SIGKILL do, where a process
boundary matters but a cold start does not (those tests start ``python -m segflow.flows.cli``).
Each process has the environment it is given, its stdout and stderr in files, and its exit
status is the command's (minus the signal's number when killed)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

#: imported once, in the fork server; each command's process starts from there
PRELOAD = ["segflow.flows.cli", "segflow.flows.segment", "segflow.flows.commands",
           "tests.processes"]


def _main(args: list[str], env: dict[str, str], out: str, err: str) -> None:
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.environ.clear()
    os.environ.update(env)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from segflow.flows.cli import main

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        code = main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Command:
    """One ``segflow`` command running in a forked process (``Popen``'s few methods used)."""

    def __init__(self, args: list[str], env: dict[str, str], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "stdout.txt", folder / "stderr.txt"
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        self.process = context.Process(target=_main,
                                       args=([str(a) for a in args], env, str(self.out),
                                             str(self.err)))
        self.process.start()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def communicate(self, timeout: float = 600) -> tuple[str, str]:
        """Wait for the command; its stdout and stderr."""
        self.process.join(timeout)
        assert self.process.exitcode is not None, f"still running after {timeout} s"
        return self.out.read_text(), self.err.read_text()
