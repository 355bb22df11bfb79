"""The local control plane, cold and warm.

Cold (nothing running): ``TemporaryAPI`` starts Prefect's temporary API server the way Prefect
itself does (uvicorn on ``prefect.server.api.server:create_app``), but first thing in the CLI,
so its start (5-10 s) overlaps the CLI's imports, the config and the Dask cluster's start; at
exit, once Prefect's log and event workers have drained, it is told to stop and not waited for.

Warm (``segflow server start``): a background process holding a Prefect server with its UI, a
Dask LocalCluster whose workers keep models loaded between runs, and an interpreter with
segflow imported. Later ``segflow segment/evaluate/batch/demo`` calls find it through the state
file ``$SEGFLOW_HOME/server.json`` (default ``~/.segflow``) and hand it their job over HTTP on
127.0.0.1 (with the state file's token): the run costs no start-up at all. It stops on
``segflow server stop`` or after ``--idle-timeout`` seconds without a request.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from pathlib import Path
from typing import Any

#: the environment Prefect gives its own temporary server (prefect/server/api/server.py)
TEMPORARY_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                 "PREFECT__SERVER_FINAL": "1"}


def profile_api_url() -> str | None:
    """``PREFECT_API_URL`` of the active Prefect profile, read without importing Prefect."""
    import tomllib

    prefect_home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home / "profiles.toml")
    try:
        profiles = tomllib.loads(path.expanduser().read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    url = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(url) if url else None


def home() -> Path:
    return Path(os.environ.get("SEGFLOW_HOME") or Path.home() / ".segflow")


def state_file() -> Path:
    return home() / "server.json"


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_healthy(api_url: str, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Return once the API answers; raise if its process died or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not healthy(api_url):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the Prefect API at {api_url} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect API at {api_url} did not start in {timeout:.0f} s")
        time.sleep(0.1)


class TemporaryAPI:
    """Prefect's temporary API server for this process, started now, stopped without a wait."""

    def __init__(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        spec = find_spec("prefect")  # its folder, without importing it (seconds)
        folder = Path(spec.origin if spec and spec.origin else ".").parent.parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(folder), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **TEMPORARY_ENV}, stdin=subprocess.DEVNULL)
        os.environ["PREFECT_API_URL"] = self.url
        self._ready = False
        # registered before Prefect's log and event workers start, so it runs after they
        # have drained at exit (atexit runs last-registered first)
        atexit.register(self.close)

    def wait(self) -> None:
        if not self._ready:
            timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                                           120))
            wait_healthy(self.url, self.process, timeout)
            self._ready = True

    def close(self) -> None:
        """Ask the server to stop; it finishes its writes on its own after this process ends."""
        if self.process.poll() is None:
            self.process.terminate()


# --- the warm server -------------------------------------------------------------------------

def find() -> dict[str, Any] | None:
    """The running warm server's state, or None (no state file, or its process is gone)."""
    try:
        state = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and alive(int(state.get("pid", 0))) else None


def call(state: dict[str, Any], command: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``command`` in the warm server and return its answer (``{"result"}`` or
    ``{"error"}``); the request waits as long as the run takes."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{state['port']}/run", method="POST",
        data=json.dumps({"command": command, "args": args}).encode(),
        headers={"Content-Type": "application/json", "X-Segflow-Token": state["token"]})
    with urllib.request.urlopen(request, timeout=None) as response:
        return dict(json.loads(response.read()))


def start(idle_timeout: float, workers: int | None, threads: int | None,
          timeout: float = 180.0) -> dict[str, Any]:
    """Start the warm server in the background (or return the one running) once it is ready."""
    running = find()
    if running:
        return running
    home().mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "segflow", "server", "run",
            "--idle-timeout", str(idle_timeout)]
    argv += ["--workers", str(workers)] if workers else []
    argv += ["--threads", str(threads)] if threads else []
    with open(home() / "server.log", "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while (state := find()) is None or state["pid"] != process.pid:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the segflow server did not start; see {home() / 'server.log'}")
        time.sleep(0.2)
    return state


def stop(timeout: float = 60.0) -> dict[str, Any] | None:
    """Stop the warm server (SIGTERM: it closes its cluster and Prefect server) and wait."""
    state = find()
    if state is None:
        return None
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def alive(pid: int) -> bool:
    """The process runs (an exited one its parent has not reaped yet does not)."""
    import psutil

    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process: it runs
        return True


class _Daemon:
    """What the warm server holds: its Prefect server, Dask cluster and request bookkeeping."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self.active = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def busy(self, delta: int) -> None:
        with self.lock:
            self.active += delta
            self.last = time.monotonic()

    def idle_for(self) -> float:
        with self.lock:
            return 0.0 if self.active else time.monotonic() - self.last


def _handler(daemon: _Daemon, token: str, scheduler: str) -> type[BaseHTTPRequestHandler]:
    from segflow.flows.commands import run_command

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self.headers.get("X-Segflow-Token") != token or self.path != "/run":
                self.send_error(403)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            daemon.busy(+1)
            try:
                answer = run_command(body["command"], body["args"], scheduler)
            finally:
                daemon.busy(-1)
            data = json.dumps(answer, default=str).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            print(f"{self.address_string()} {format % args}", flush=True)

    return Handler


def run(idle_timeout: float, workers: int | None, threads: int | None) -> None:
    """The warm server's main loop (``segflow server run``, started by ``segflow server start``)."""
    import dask

    from segflow.flows.commands import JOBS
    from segflow.tasks.config import ClusterConfig
    from segflow.tasks.runtime.cluster import WORKER_MALLOC, local_cluster

    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}/api"
    prefect = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                                "127.0.0.1", "--port", str(api_port)],
                               stdin=subprocess.DEVNULL)
    daemon = _Daemon(idle_timeout)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stopping.set())
    try:
        for job in JOBS.values():  # imported once, here, not in the first request
            job.prepare()
        wait_healthy(api_url, prefect, 180)
        os.environ["PREFECT_API_URL"] = api_url
        with dask.config.set(WORKER_MALLOC), local_cluster(ClusterConfig(
                n_workers=workers, threads_per_worker=threads)) as cluster:
            token = secrets.token_hex(16)
            httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                        _handler(daemon, token, cluster.scheduler_address))
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            state = {"pid": os.getpid(), "port": httpd.server_address[1], "token": token,
                     "api_url": api_url, "ui_url": f"http://127.0.0.1:{api_port}",
                     "scheduler": cluster.scheduler_address,
                     "dashboard": cluster.dashboard_link, "idle_timeout": idle_timeout,
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            staged = state_file().with_suffix(".tmp")
            staged.write_text(json.dumps(state, indent=1))
            staged.chmod(0o600)  # the token lets its holder run jobs as this user
            staged.replace(state_file())
            print(f"segflow server ready: {json.dumps(state)}", flush=True)
            daemon.busy(0)  # the idle clock starts now
            while not daemon.stopping.wait(1.0):
                if daemon.idle_for() > idle_timeout:
                    print(f"idle for {idle_timeout:.0f} s: stopping", flush=True)
                    break
            httpd.shutdown()
    finally:
        _drain_prefect()  # before its server goes: at exit they would retry against nothing
        prefect.terminate()
        prefect.wait(30)
        state_file().unlink(missing_ok=True)


def _drain_prefect() -> None:
    """Send the logs and events Prefect still queues for the API."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
