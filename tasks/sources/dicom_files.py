"""DICOM files as a folder, an S3 prefix or a .zip holds them: listing, opening one for one read,
and telling a DICOM Part 10 file by its preamble; shared by the series and slide readers."""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from segflow.tasks.errors import io_error, is_transient
from segflow.tasks.runtime.storage import filesystem, open_input
from segflow.tasks.sources.base import needs

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
def opener(uri: str) -> Iterator[Callable[[str], IO[bytes]]]:
    """A function opening one file of the folder, prefix or .zip for one read (use each in a
    ``with``); a .zip is opened once for all the files read through it."""
    if uri.lower().endswith(_ZIP):
        with open_input(uri) as fh, zipfile.ZipFile(fh) as archive:
            yield lambda name: io.BytesIO(archive.read(name))
        return
    yield lambda name: open_input(posixpath.join(uri.rstrip("/"), name))


@contextmanager
def member(uri: str, name: str) -> Iterator[IO[bytes]]:
    """One file of the folder, prefix or .zip, opened for one read."""
    with opener(uri) as open_one, open_one(name) as fh:
        yield fh


def load_pydicom(uri: str) -> Any:
    """pydicom, or a one-line error naming ``uri`` when the dicom extra is missing."""
    return needs("pydicom", "dicom", uri, "DICOM files")


def is_dicom_file(uri: str, name: str) -> bool:
    """DICOM Part 10: 128 bytes of preamble, then ``DICM``."""
    with member(uri, name) as fh:
        return fh.read(132)[128:] == b"DICM"


def first_image(uri: str, tags: list[str]) -> Any | None:
    """The header (``tags`` only) of the first DICOM image among the first files of a folder,
    prefix or .zip (a DICOMDIR or a report is no image); None when there is none."""
    try:
        names = [n for n in members(uri)[:8] if is_dicom_file(uri, n)]
    except Exception as exc:
        if is_transient(exc):
            raise io_error(uri, "cannot list the DICOM files", exc) from exc
        return None
    pydicom = load_pydicom(uri)
    for name in names:
        with member(uri, name) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=[*tags, "Rows"])
        if "Rows" in ds:
            return ds
    return None
