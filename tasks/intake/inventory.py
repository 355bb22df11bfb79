"""What a batch is made of: the images under a prefix or in a manifest, or the items of a STAC
search or ItemCollection (tasks/intake/stac_search.py).

A prefix is a local folder or any fsspec URL (``s3://bucket/scenes/``); a manifest is a ``.csv``
with a ``uri`` (or ``source``) column, or a ``.txt`` with one URI per line. Which of them are done
is the catalog's to say (catalog/done.py).
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from segflow.tasks.errors import UserError, io_error
from segflow.tasks.runtime.storage import filesystem
from segflow.tasks.sources.registry import is_image

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
            raise UserError(prefix, "no such folder or prefix")
        entries = fs.find(root, withdirs=True)
    except OSError as exc:
        raise io_error(prefix, "cannot list", exc) from exc
    skip = filesystem(exclude)[1] if exclude else None
    found = []
    for path in entries:
        rel = path[len(root):].strip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if skip and _under(path, skip):
            continue
        if is_image(_uri(fs, path.rstrip("/"))):
            found.append(path.rstrip("/"))
    stores = [p for p in found if p.lower().endswith(".zarr")]
    images = [p for p in found if not any(_under(p, s) and p != s for s in stores)]
    return sorted(_uri(fs, p) for p in dict.fromkeys(images))


def _manifest_rows(text: str, name: str) -> Iterable[str]:
    if name.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        column = next((c for c in ("uri", "source") if c in (reader.fieldnames or [])), None)
        if column is None:
            raise UserError(name, "a CSV manifest needs a 'uri' or 'source' column")
        return (row[column] for row in reader)
    return text.splitlines()


def read_manifest(manifest: str) -> list[str]:
    """URIs listed in a manifest, in order; relative paths are relative to the manifest."""
    try:
        fs, path = filesystem(manifest)
        text = fs.cat_file(path).decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise io_error(manifest, "cannot read manifest", exc) from exc
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
    """The images of a batch: a STAC API search's items, an ItemCollection's items, a
    manifest's entries, or every image under a prefix."""
    from segflow.tasks.intake.stac_search import collection_items, is_search, search_items

    name = prefix_or_manifest.lower()
    if is_search(prefix_or_manifest):
        return search_items(prefix_or_manifest)
    if name.endswith(".json"):
        return collection_items(prefix_or_manifest)
    if name.endswith(MANIFEST_SUFFIXES):
        return read_manifest(prefix_or_manifest)
    return list_images(prefix_or_manifest, exclude)
