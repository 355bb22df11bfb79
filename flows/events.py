"""The data-arrival event: ``segflow.object.created``, about one image, for Prefect automations.

A watcher (``segflow watch --emit-events``) or a bridge from S3 notifications emits it; the
``on-arrival`` deployment's trigger (flows/deployments.py) starts ``segment_image`` with the
event's resource id, the image's URI, as its ``source``.
"""

from __future__ import annotations

from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL

from segflow.tasks.errors import UserError

OBJECT_CREATED = "segflow.object.created"


def require_server(what: str, source: str) -> None:
    """Fail in one line when no Prefect server is configured: a temporary API started for this
    process would take events and deployments down with it."""
    if not PREFECT_API_URL.value():
        raise UserError(source, f"{what} need a Prefect server: set PREFECT_API_URL")


def emit_object_created(uri: str, checksum: str) -> None:
    """Tell the Prefect server that the image at ``uri`` (with this content checksum) arrived.

    Prefect sends events from a background worker that drains at interpreter exit, so a
    one-shot watcher loses none.
    """
    require_server("events", uri)
    emit_event(OBJECT_CREATED, resource={"prefect.resource.id": uri,
                                         "prefect.resource.name": uri.rsplit("/", 1)[-1],
                                         "segflow.checksum": checksum})
