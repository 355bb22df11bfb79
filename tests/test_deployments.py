"""``segflow serve`` against a real Prefect API: the deployments it registers (a cron batch, an
event-triggered per-image flow), and an arrival event that makes the server start a run.

The session's Prefect API (``prefect_server``) runs the server's trigger and action services;
``serve`` runs in its own process, as in production, and executes the flow run it is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.sorting import FlowRunSort

from segflow.flows.deployments import DEFAULT_PATH, load_specs
from segflow.flows.events import emit_object_created
from segflow.tasks.catalog.query import run_query
from segflow.tasks.errors import SegflowError
from segflow.tasks.sources.identity import source_checksum

REPO = Path(__file__).resolve().parents[1]


def _wait(what: str, probe, timeout: float, log: Path):
    """Poll ``probe`` until it returns something truthy; fail with the serve log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; serve log:\n{log.read_text()[-4000:]}")


def _quietly(read):
    def probe():
        try:
            return read()
        except Exception:  # not there yet (404) is the normal answer while waiting
            return None
    return probe


@pytest.fixture
def served(tmp_path, prefect_server, dask_address):
    """A deployments file with names unique to this run, served by a ``segflow serve``-style
    subprocess (``flows.deployments.main``) against the session's Prefect API."""
    tag = uuid.uuid4().hex[:8]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (tmp_path / "job.yaml").write_text("model: {kind: otsu}\ntiling: {chunk: 256}\n")
    common = {"out": str(tmp_path / "out"), "config": "job.yaml", "scheduler": dask_address}
    specs = [
        {"name": f"nightly-{tag}", "kind": "batch", "prefix": f"{incoming}/",
         "cron": "0 2 * * *", "timezone": "Europe/Berlin", **common},
        {"name": f"on-arrival-{tag}", "kind": "on-arrival", "match": f"{incoming}/*", **common},
    ]
    path = tmp_path / "deployments.yaml"
    path.write_text(yaml.safe_dump({"deployments": specs}))
    log = tmp_path / "serve.log"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c",
             f"from segflow.flows.deployments import main; main({str(path)!r})"],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield {"tag": tag, "incoming": incoming, "out": tmp_path / "out", "log": log,
               "process": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_registers_schedule_and_an_arrival_event_starts_a_run(served, rgb_tif):
    tag, log = served["tag"], served["log"]
    with get_client(sync_client=True) as client:
        nightly = _wait("the cron deployment", _quietly(
            lambda: client.read_deployment_by_name(f"segment_batch/nightly-{tag}")), 60, log)
        [schedule] = nightly.schedules
        assert schedule.active and not nightly.paused
        assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *",
                                                                          "Europe/Berlin")
        assert nightly.parameters["sources"] == f"{served['incoming']}/"
        assert nightly.parameters["config"]["model"]["kind"] == "otsu"

        on_arrival = _wait("the triggered deployment", _quietly(
            lambda: client.read_deployment_by_name(f"segment_image/on-arrival-{tag}")), 30, log)
        [automation] = _wait("the trigger's automation", lambda: client.read_automations_by_name(
            f"on-arrival-{tag}: segflow.object.created"), 30, log)
        assert automation.enabled

    # An image lands under the watched prefix; its arrival event starts a run on the server.
    image = served["incoming"] / "scene.tif"
    image.write_bytes(rgb_tif.read_bytes())
    time.sleep(1)  # the server loads a new automation into its trigger cache just after commit
    emit_object_created(str(image), source_checksum(str(image)))
    # An object outside the match emits too, and starts nothing.
    emit_object_created(str(rgb_tif), source_checksum(str(rgb_tif)))

    def succeeded():
        rows = run_query(str(served["out"]), "select * from runs")
        return [r for r in rows.to_pylist() if r["status"] == "succeeded"]

    [row] = _wait("a succeeded runs row", succeeded, 90, log)
    assert row["source_uri"] == str(image)
    with get_client(sync_client=True) as client:
        run = _wait("the flow run to complete", lambda: (
            r if (r := client.read_flow_run(UUID(row["run_id"]))).state.is_completed() else None),
            30, log)
        # one run of the deployment: the event for the object outside the match started none
        runs = client.read_flow_runs(  # limit and sort explicit: this server rejects nulls
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[on_arrival.id])),
            limit=10, sort=FlowRunSort.START_TIME_ASC)
    assert [r.id for r in runs] == [run.id]
    assert run.parameters["source"] == str(image)
    assert (served["out"] / "masks" / f"{row['image_id']}.png").is_file()  # its quick look

    # Stopping serve leaves the schedule running: a restarted serve needs no unpausing.
    served["process"].terminate()
    served["process"].wait(15)
    with get_client(sync_client=True) as client:
        after = client.read_deployment_by_name(f"segment_batch/nightly-{tag}")
    assert not after.paused and after.schedules[0].active


def test_shipped_deployments_file_is_valid():
    specs = {s.name: s for s in load_specs(DEFAULT_PATH)}
    assert {s.kind for s in specs.values()} == {"batch", "on-arrival"}
    assert any(s.cron for s in specs.values()) and any(s.interval for s in specs.values())


def test_served_runs_share_the_serve_process_cluster_unless_a_spec_names_one():
    """Every flow run ``serve`` starts is a subprocess; they all get the serve process's one
    cluster (warm workers, no cluster start per run) unless their spec names a scheduler."""
    from segflow.flows.deployments import build

    shared, own = "tcp://127.0.0.1:8786", "tcp://10.0.0.5:8786"
    for spec in load_specs(DEFAULT_PATH):
        deployment = build(spec, DEFAULT_PATH.parent, shared)
        params = (deployment.parameters if spec.kind == "batch"
                  else deployment.triggers[0].parameters)
        assert params["scheduler"] == shared
        named = build(spec.model_copy(update={"scheduler": own}), DEFAULT_PATH.parent, shared)
        params = named.parameters if spec.kind == "batch" else named.triggers[0].parameters
        assert params["scheduler"] == own


def test_invalid_deployment_is_one_line_error(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("deployments:\n  - {name: x, kind: batch, out: /tmp/o, prefix: /tmp/i}\n")
    with pytest.raises(SegflowError, match="a batch needs a prefix and one of cron or interval"):
        load_specs(path)


def test_events_need_a_prefect_server():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}), \
            pytest.raises(SegflowError, match="set PREFECT_API_URL"):
        emit_object_created("s3://b/k.tif", "sha256:0")
