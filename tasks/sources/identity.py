"""Stable names for things: the image id of a source, its content checksum, the resume key."""

from __future__ import annotations

import hashlib
import os
import re
from functools import partial
from typing import Any

import fsspec

from segflow.tasks.errors import io_error
from segflow.tasks.runtime.storage import filesystem
from segflow.tasks.sources.registry import STAC, image_suffixes


def normal_uri(uri: str) -> str:
    """One spelling per file: a local path absolute with links and ``..`` resolved
    (``in/x.tif``, ``./in/x.tif`` and ``/abs/in/x.tif`` are one image); ``file://`` dropped;
    URLs as given."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return uri if "://" in uri else os.path.realpath(uri)


def image_id(uri: str) -> str:
    """A path-safe id, stable for a source URI: the file stem (less any image suffix a reader
    claims, ``.nii.gz`` and ``.ome.tif`` whole, and ``.ome`` of ``.ome.zarr``; a STAC item's
    id) plus a short hash of the URI."""
    base, _, item = uri.partition("#")  # one item of a STAC ItemCollection: its id
    stem = item or base.rstrip("/").rsplit("/", 1)[-1]
    for ext in sorted(image_suffixes(), key=len, reverse=True):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    if stem.lower().endswith(".ome"):
        stem = stem[: -len(".ome")]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return f"{stem[:60]}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}"


def source_checksum(uri: str) -> str:
    """What identifies the source's bytes: it changes whenever the source is replaced.

    A STAC item (or ItemCollection, or one item of it): ``stac:sha256:`` of the items without
    their links. On an object store that lists ETags (S3): ``etag:<ETag>:<size>``, from the
    object's metadata, nothing downloaded. Elsewhere: ``sha256:`` of the bytes, streamed in
    8 MiB blocks (memory does not grow with size). A directory store (Zarr) hashes every
    object's relative path and ETag + size (or bytes), in sorted order.
    """
    if STAC.may_open(uri):  # STAC items: their content, whatever the links say (by name:
        # asking reader_for would open every .tif to tell a slide from a GeoTIFF)
        from segflow.tasks.sources.stac_items import item_checksum

        content = item_checksum(uri)
        if content is not None:
            return content
    try:
        fs, root = filesystem(uri)
        fs.invalidate_cache(root)  # another process may have replaced it since we last looked
        info = fs.info(root)
        found = fs.find(root, detail=True) if info["type"] == "directory" else {root: info}
        if all(meta.get("ETag") for meta in found.values()):
            return _etag_checksum(root, found)
        return _content_checksum(fs, root, sorted(found))
    except (OSError, ValueError) as exc:
        raise io_error(uri, "cannot read source", exc) from exc


def _etag_checksum(root: str, found: dict[str, dict[str, Any]]) -> str:
    if list(found) == [root]:
        etag = found[root]["ETag"].strip('"')
        return f"etag:{etag}:{found[root]['size']}"
    sha = hashlib.sha256()
    for name in sorted(found):
        sha.update(f"{name[len(root):]}|{found[name]['ETag']}|{found[name]['size']}\n".encode())
    return f"etag:sha256:{sha.hexdigest()}"


def _content_checksum(fs: fsspec.AbstractFileSystem, root: str, names: list[str]) -> str:
    sha = hashlib.sha256()
    for name in names:
        if name != root:
            sha.update(name[len(root):].encode())
        with fs.open(name, "rb") as fh:
            for block in iter(partial(fh.read, 8 << 20), b""):
                sha.update(block)
    return f"sha256:{sha.hexdigest()}"


def resume_key(checksum: str, model: str, config_hash: str) -> str:
    """Outputs are reusable only for the same bytes, the same model and the same config."""
    return hashlib.sha256(f"{checksum}|{model}|{config_hash}".encode()).hexdigest()[:24]
