"""S3 ObjectCreated notifications delivered to SQS: which objects arrived, and acknowledging them.

boto3 takes the endpoint, region and credentials from the standard AWS environment or profile.
A message stays invisible while its images are processed (``VISIBILITY_S``); one that is not
deleted comes back after that, so a consumer that dies mid-way loses nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from segflow.tasks.errors import io_error

#: seconds a received message stays hidden from other consumers while its images are segmented
VISIBILITY_S = 3600


@dataclass(frozen=True)
class Notice:
    """One SQS message: the objects it announces (possibly none) and its receipt handle."""

    receipt: str
    uris: tuple[str, ...]


def object_uris(body: str) -> tuple[str, ...]:
    """``s3://bucket/key`` of every ObjectCreated record in an S3 notification body.

    Keys arrive URL-encoded (``+`` for spaces); ``s3:TestEvent`` and other events give none.
    """
    try:
        event = json.loads(body)
    except json.JSONDecodeError:
        return ()
    if not isinstance(event, dict):
        return ()
    return tuple(
        f"s3://{r['s3']['bucket']['name']}/{unquote_plus(r['s3']['object']['key'])}"
        for r in event.get("Records", [])
        if str(r.get("eventName", "")).startswith("ObjectCreated"))


def _client() -> Any:
    return boto3.client("sqs")


def receive(queue_url: str, wait_s: int, max_messages: int = 10) -> list[Notice]:
    """Up to ``max_messages`` notices, long-polling for at most ``wait_s`` seconds."""
    try:
        reply = _client().receive_message(QueueUrl=queue_url, MaxNumberOfMessages=max_messages,
                                          WaitTimeSeconds=wait_s, VisibilityTimeout=VISIBILITY_S)
    except (BotoCoreError, ClientError) as exc:
        raise io_error(queue_url, "cannot receive", exc) from exc
    return [Notice(m["ReceiptHandle"], object_uris(m["Body"])) for m in reply.get("Messages", [])]


def acknowledge(queue_url: str, notice: Notice) -> None:
    """Delete a message: its images are recorded in the catalog."""
    try:
        _client().delete_message(QueueUrl=queue_url, ReceiptHandle=notice.receipt)
    except (BotoCoreError, ClientError) as exc:
        raise io_error(queue_url, "cannot delete message", exc) from exc
