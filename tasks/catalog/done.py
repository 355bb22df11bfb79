"""Which images are done, read from the catalog's ``runs`` table: a batch, a watcher or a
redelivered notification can fire any number of times and repeat no work."""

from __future__ import annotations

from datetime import datetime

from segflow.tasks.catalog.query import connect


def completed(root: str, config_hash: str) -> set[tuple[str, str]]:
    """(source_uri, source_checksum) pairs with a ``succeeded`` run for this config hash."""
    rows = connect(root).execute(
        "select distinct source_uri, source_checksum from runs "
        "where status = 'succeeded' and config_hash = ?", [config_hash]).fetchall()
    return {(uri, checksum) for uri, checksum in rows}


def done(root: str, uri: str, checksum: str, config_hash: str) -> bool:
    """True when ``uri`` with these bytes and this config already has a succeeded run."""
    return (uri, checksum) in completed(root, config_hash)


def recorded(root: str, uris: list[str], since: datetime) -> set[str]:
    """Which of ``uris`` have a runs row (succeeded or failed) that finished at or after
    ``since``: proof that a run was recorded, before its trigger is acknowledged."""
    if not uris:
        return set()
    rows = connect(root).execute(
        "select distinct source_uri from runs where finished_at >= ? and source_uri in "
        f"({', '.join('?' * len(uris))})", [since, *uris]).fetchall()
    return {uri for (uri,) in rows}
