"""Stable names for things: the image id of a source, its content checksum, the resume key."""

from __future__ import annotations

import hashlib
import re

import fsspec

from tasks.errors import SegflowError, first_line


def image_id(uri: str) -> str:
    """A path-safe id, stable for a source URI: readable stem plus a short hash of the URI."""
    stem = uri.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".tiff", ".tif", ".zarr"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return f"{stem[:60]}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}"


def source_checksum(uri: str) -> str:
    """sha256 of the source bytes, streamed in 8 MiB blocks (memory does not grow with size).

    A directory store (Zarr) hashes every object's relative path and bytes, in sorted order.
    """
    sha = hashlib.sha256()
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        objects = sorted(fs.find(root)) if fs.isdir(root) else [root]
        for name in objects:
            if name != root:
                sha.update(name[len(root):].encode())
            with fs.open(name, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(8 << 20), b""):
                    sha.update(block)
    except (OSError, ValueError) as exc:
        raise SegflowError(uri, f"cannot read source: {first_line(exc)}") from exc
    return f"sha256:{sha.hexdigest()}"


def resume_key(checksum: str, model: str, config_hash: str) -> str:
    """Outputs are reusable only for the same bytes, the same model and the same config."""
    return hashlib.sha256(f"{checksum}|{model}|{config_hash}".encode()).hexdigest()[:24]
