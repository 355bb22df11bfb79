"""``segflow server``: a warm Prefect server + Dask cluster that later CLI calls find and use.

Real processes throughout: the server is started by the CLI in the background, the jobs are
run by ``segflow segment`` subprocesses, and the Prefect API is asked what ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from segflow.flows.server import _Daemon, alive, find

CLI = [sys.executable, "-m", "segflow"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("SEGFLOW_HOME", str(path))
    return path


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


def test_warm_server_runs_later_calls_and_stops(home, rgb_tif, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    started = _cli("server", "start", "--idle-timeout", "600", "--workers", "1",
                   env=env)
    assert started.returncode == 0, started.stderr
    state = find()
    assert state is not None and "Prefect UI" in started.stdout
    try:
        out = tmp_path / "out"
        ran = _cli("segment", str(rgb_tif), "--out", str(out), "--set", "model.kind=otsu",
                   env=env)
        assert ran.returncode == 0, ran.stderr
        assert "mask:" in ran.stdout
        # it ran in the server: its flow run is in the server's Prefect API, on its cluster
        runs = httpx.post(f"{state['api_url']}/flow_runs/filter",
                          json={"flows": {"name": {"any_": ["segment_image"]}},
                                "limit": 1, "sort": "START_TIME_DESC"}).json()
        assert runs[0]["parameters"]["source"] == str(rgb_tif)
        assert runs[0]["state"]["type"] == "COMPLETED"
        assert runs[0]["parameters"]["scheduler"] == state["scheduler"]
        assert (out / "catalog").is_dir()
        # a bad file: the one-line error comes back to the caller
        bad = tmp_path / "bad.tif"
        bad.write_bytes(b"not a tiff")
        failed = _cli("segment", str(bad), "--out", str(out), env=env)
        assert failed.returncode == 1
        assert failed.stderr.strip().splitlines() == [failed.stderr.strip()]
        assert failed.stderr.startswith(f"segflow: error: {bad}: ")
    finally:
        stopped = _cli("server", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert find() is None and not (home / "server.json").exists()
    assert not alive(int(state["pid"]))
    assert state["token"]  # the state file held the caller's token


def test_idle_clock_counts_only_when_nothing_runs():
    daemon = _Daemon(idle_timeout=60)
    daemon.busy(+1)
    daemon.last -= 100
    assert daemon.idle_for() == 0.0
    daemon.busy(-1)
    assert 0 <= daemon.idle_for() < 1
    daemon.last -= 100
    assert daemon.idle_for() >= 100
