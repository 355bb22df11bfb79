"""What a batch is made of: the images under a prefix or in a manifest, and which are done.

A prefix is a local folder or any fsspec URL (``s3://bucket/scenes/``); a manifest is a ``.csv``
with a ``uri`` (or ``source``) column, or a ``.txt`` with one URI per line. "Done" is read from
the catalog, so the same listing can be processed any number of times.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterable
from datetime import datetime

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tasks.errors import SegflowError, first_line
from tasks.query import connect
from tasks.storage import filesystem

IMAGE_SUFFIXES = (".tif", ".tiff", ".svs", ".nii", ".nii.gz", ".zarr")
MANIFEST_SUFFIXES = (".csv", ".txt")


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A plain path for local files (the URI ``segflow segment`` would be given), else a URL."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def list_images(prefix: str, exclude: str | None = None) -> list[str]:
    """Image URIs under ``prefix``, sorted; a ``.zarr`` folder is one image, never descended.

    Hidden names and anything under ``exclude`` (the output root, when it lies inside the
    prefix: its masks are ``.zarr`` folders too) are left out.
    """
    try:
        fs, root = filesystem(prefix)
        fs.invalidate_cache()  # a watcher lists the same prefix again: see new objects
        if not fs.exists(root):
            raise SegflowError(prefix, "no such folder or prefix")
        entries = fs.find(root, withdirs=True)
    except OSError as exc:
        raise SegflowError(prefix, f"cannot list: {first_line(exc)}") from exc
    skip = filesystem(exclude)[1] if exclude else None
    found = []
    for path in entries:
        rel = path[len(root):].strip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if skip and _under(path, skip):
            continue
        if path.lower().rstrip("/").endswith(IMAGE_SUFFIXES):
            found.append(path.rstrip("/"))
    stores = [p for p in found if p.lower().endswith(".zarr")]
    images = [p for p in found if not any(_under(p, s) and p != s for s in stores)]
    return sorted(_uri(fs, p) for p in dict.fromkeys(images))


def _manifest_rows(text: str, name: str) -> Iterable[str]:
    if name.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        column = next((c for c in ("uri", "source") if c in (reader.fieldnames or [])), None)
        if column is None:
            raise SegflowError(name, "a CSV manifest needs a 'uri' or 'source' column")
        return (row[column] for row in reader)
    return text.splitlines()


def read_manifest(manifest: str) -> list[str]:
    """URIs listed in a manifest, in order; relative paths are relative to the manifest."""
    try:
        fs, path = filesystem(manifest)
        text = fs.cat_file(path).decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise SegflowError(manifest, f"cannot read manifest: {first_line(exc)}") from exc
    folder = posixpath.dirname(path)
    uris = []
    for raw in _manifest_rows(text, manifest):
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        if "://" not in item and not item.startswith("/"):
            item = _uri(fs, posixpath.normpath(posixpath.join(folder, item)))
        uris.append(item)
    return list(dict.fromkeys(uris))


def inventory(prefix_or_manifest: str, exclude: str | None = None) -> list[str]:
    """The images of a batch: a manifest's entries, or every image under a prefix."""
    name = prefix_or_manifest.lower()
    if name.endswith(MANIFEST_SUFFIXES):
        return read_manifest(prefix_or_manifest)
    return list_images(prefix_or_manifest, exclude)


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
