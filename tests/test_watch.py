"""``segflow watch``: prefix polling processes each object once, new and changed ones again;
S3 notifications on SQS are consumed and deleted only once their images are recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import pytest

from segflow.flows.batch import watch_prefix
from segflow.tasks.catalog.query import run_query
from segflow.tasks.intake.queue import object_uris
from tests.test_batch import OPTIONS, config, crop


def put(where: str, bucket: str, folder: Path, name: str, src: Path) -> str:
    """Place an image under the watched prefix (a local folder or s3://bucket/incoming/)."""
    if where == "local":
        (folder / name).write_bytes(src.read_bytes())
        return str(folder / name)
    boto3.client("s3").upload_file(str(src), bucket, f"incoming/{name}")
    return f"s3://{bucket}/incoming/{name}"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_watch_once_processes_new_and_changed_objects_once(where, s3_bucket, tmp_path,
                                                            dask_address):
    made = tmp_path / "made"
    folder = tmp_path / "incoming"
    folder.mkdir()
    prefix = str(folder) if where == "local" else f"s3://{s3_bucket}/incoming/"
    a = put(where, s3_bucket, folder, "a.tif", crop(made / "a.tif", 200, 200))
    b = put(where, s3_bucket, folder, "b.tif", crop(made / "b.tif", 300, 350))
    root = str(tmp_path / "out")
    reports: list[list[dict]] = []

    def once() -> dict[str, str]:
        rows = watch_prefix(prefix, root, config(), dask_address, interval=0, passes=1,
                            concurrency=2, emit_events=False, report=reports.append)
        return {r["uri"]: r["status"] for r in rows}

    assert once() == {a: "succeeded", b: "succeeded"}
    assert once() == {a: "skipped", b: "skipped"}
    c = put(where, s3_bucket, folder, "c.tif", crop(made / "c.tif", 400, 250))
    assert once() == {a: "skipped", b: "skipped", c: "succeeded"}
    put(where, s3_bucket, folder, "a.tif", crop(made / "a2.tif", 100, 400))  # new bytes
    assert once() == {a: "succeeded", b: "skipped", c: "skipped"}
    assert len(reports) == 4

    runs = run_query(root, "select source_uri, count(*) as n, "
                           "count(distinct source_checksum) as sums from runs "
                           "where status = 'succeeded' group by 1 order by 1").to_pylist()
    assert runs == [{"source_uri": a, "n": 2, "sums": 2}, {"source_uri": b, "n": 1, "sums": 1},
                    {"source_uri": c, "n": 1, "sums": 1}]


def test_notification_bodies_give_decoded_object_uris():
    record = {"eventName": "ObjectCreated:Put",
              "s3": {"bucket": {"name": "scenes"}, "object": {"key": "in/day+1/a%2Bb.tif"}}}
    removed = {**record, "eventName": "ObjectRemoved:Delete"}
    assert object_uris(json.dumps({"Records": [record, removed]})) == (
        "s3://scenes/in/day 1/a+b.tif",)
    assert object_uris(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == ()
    assert object_uris("not json") == ()


def test_watch_queue_consumes_s3_notifications(s3_bucket, tmp_path, cli, dask_address):
    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    queue = sqs.create_queue(QueueName=f"{s3_bucket}-q")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue,
                                   AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=s3_bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    made = tmp_path / "made"
    for name, (row, col) in {"a.tif": (200, 200), "b c.tif": (300, 350)}.items():
        s3.upload_file(str(crop(made / name, row, col)), s3_bucket, f"in/{name}")
    s3.put_object(Bucket=s3_bucket, Key="in/bad.tif", Body=b"II*\x00not really a tiff")
    s3.put_object(Bucket=s3_bucket, Key="in/notes.txt", Body=b"not an image")

    root = tmp_path / "out"
    code, _, stderr = cli("watch", "--queue", queue, "--once", "--out", root,
                          "--scheduler", dask_address,
                          *(a for o in OPTIONS for a in ("--set", o)), env={"COLUMNS": "250"})
    assert code == 1, stderr  # bad.tif failed
    errors = [line for line in stderr.splitlines() if line.startswith("segflow:")]
    assert len(errors) == 1 and errors[0].startswith(f"segflow: error: s3://{s3_bucket}/in/bad.tif:")

    runs = run_query(str(root), "select source_uri, status from runs order by 1").to_pylist()
    assert runs == [{"source_uri": f"s3://{s3_bucket}/in/a.tif", "status": "succeeded"},
                    {"source_uri": f"s3://{s3_bucket}/in/b c.tif", "status": "succeeded"},
                    {"source_uri": f"s3://{s3_bucket}/in/bad.tif", "status": "failed"}]
    # every message is gone: the images are recorded (bad.tif as a failed row), notes.txt is
    # no image, nothing is left in flight for redelivery
    left = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    assert left == {"ApproximateNumberOfMessages": "0",
                    "ApproximateNumberOfMessagesNotVisible": "0"}


def test_watch_needs_a_prefix_or_a_queue(tmp_path, cli):
    code, _, stderr = cli("watch", "--out", tmp_path, "--once")
    assert code == 1
    err = stderr.strip().splitlines()
    assert err == ["segflow: error: watch: give either PREFIX or --queue SQS_URL"]


def test_emit_events_announces_each_new_image_once(tmp_path, dask_address, prefect_server):
    import httpx
    from prefect.events.worker import EventsWorker

    from segflow.flows.batch import run_batch

    folder = tmp_path / "incoming"
    done, new = str(crop(folder / "done.tif", 200, 200)), str(crop(folder / "new.tif", 300, 350))
    root = str(tmp_path / "out")
    run_batch([done], root, config(), dask_address)

    def once() -> dict[str, str]:
        rows = watch_prefix(str(folder), root, config(), None, interval=0, passes=1,
                            concurrency=1, emit_events=True, report=lambda rows: None)
        return {r["uri"]: r["status"] for r in rows}

    assert once() == {done: "skipped", new: "announced"}
    EventsWorker.drain_all()
    query = {"filter": {"event": {"name": ["segflow.object.created"]},
                        "resource": {"id": [new, done]}}, "limit": 50}
    deadline = time.monotonic() + 30
    while not (found := httpx.post(f"{prefect_server}/events/filter",
                                   json=query).json()["events"]):
        assert time.monotonic() < deadline, "no event reached the Prefect server"
        time.sleep(0.5)
    assert [e["resource"]["prefect.resource.id"] for e in found] == [new]
    assert found[0]["resource"]["segflow.checksum"].startswith("sha256:")


def test_one_cluster_serves_every_pass_and_image_of_a_watcher(tmp_path, monkeypatch,
                                                             prefect_server):
    """Two passes, three images, no scheduler given: one LocalCluster is started, not one per
    pass or image (its workers keep the model between runs)."""
    import segflow.tasks.runtime.cluster as cluster

    starts = []
    real = cluster.local_cluster
    monkeypatch.setattr(cluster, "local_cluster", lambda cfg: starts.append(1) or real(cfg))
    folder, made = tmp_path / "incoming", tmp_path / "made"
    folder.mkdir()
    put("local", "", folder, "a.tif", crop(made / "a.tif", 200, 200))
    put("local", "", folder, "b.tif", crop(made / "b.tif", 300, 350))
    passes: list[dict[str, str]] = []

    def report(rows: list[dict]) -> None:
        passes.append({Path(r["uri"]).name: r["status"] for r in rows})
        if len(passes) == 1:  # an image arrives between the passes
            put("local", "", folder, "c.tif", crop(made / "c.tif", 400, 250))

    watch_prefix(str(folder), str(tmp_path / "out"), config(), None, interval=0, passes=2,
                 concurrency=2, emit_events=False, report=report)
    assert passes == [{"a.tif": "succeeded", "b.tif": "succeeded"},
                      {"a.tif": "skipped", "b.tif": "skipped", "c.tif": "succeeded"}]
    assert len(starts) == 1
