"""DICOM files as a folder, an S3 prefix or a .zip holds them: listing, opening one for one read,
and telling a DICOM Part 10 file by its preamble; shared by the series and slide readers."""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from segflow.tasks.errors import UserError
from segflow.tasks.runtime.storage import filesystem, open_input

_ZIP = ".zip"

#: VL Whole Slide Microscopy Image Storage: a slide, read by the DICOM WSI reader
SLIDE_CLASSES = {"1.2.840.10008.5.1.4.1.1.77.1.6"}


def members(uri: str) -> list[str]:
    """Every file of a folder, prefix or .zip, as paths relative to ``uri``, sorted."""
    if uri.lower().endswith(_ZIP):
        with open_input(uri) as fh, zipfile.ZipFile(fh) as archive:
            return sorted(n for n in archive.namelist() if not n.endswith("/"))
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    return sorted(p[len(root) + 1:] for p in fs.find(root) if p != root)


@contextmanager
def member(uri: str, name: str) -> Iterator[IO[bytes]]:
    """One file of the series, opened for one read (no handle outlives it)."""
    if uri.lower().endswith(_ZIP):
        with open_input(uri) as fh, zipfile.ZipFile(fh) as archive:
            yield io.BytesIO(archive.read(name))
        return
    with open_input(posixpath.join(uri.rstrip("/"), name)) as fh:
        yield fh


def load_pydicom(uri: str) -> Any:
    """pydicom, or a one-line error naming ``uri`` when the dicom extra is missing."""
    try:
        import pydicom
    except ImportError as exc:
        raise UserError(uri, "DICOM needs the dicom extra: pip install 'segflow[dicom]'"
                        ) from exc
    return pydicom


def is_dicom_file(uri: str, name: str) -> bool:
    """DICOM Part 10: 128 bytes of preamble, then ``DICM``."""
    with member(uri, name) as fh:
        return fh.read(132)[128:] == b"DICM"
