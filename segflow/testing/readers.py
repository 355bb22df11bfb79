"""What every reader promises, checked against the format's own library on the whole file.

A subclass says how to make its file (``make``), how the format's library reads it whole
(``expected``: pixels (bands, *spatial), valid mask, physical coordinates of two cells) and how
to spoil it (``corrupt``); ``location`` puts it on local disk, or on S3 (the test session then
provides an ``s3_bucket`` fixture naming an empty bucket, e.g. on moto's server). A plug-in
package runs the same contract on its own reader::

    from segflow.testing import ReaderContract

    class TestMyReader(ReaderContract):
        reader_name = "myformat"
        ...
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import TransientError, UserError
from segflow.tasks.sources.base import SourceBase
from segflow.tasks.sources.registry import open_source, reader_for, readers

#: what the pickled reader must never carry: the moto session's keys
SECRETS = (b"testing", b"AKIA")


def upload(bucket: str, key: str, path: Path) -> str:
    """Put a file, or every file of a folder (a Zarr store), under ``key``; its s3:// URI."""
    import boto3

    s3 = boto3.client("s3")
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            s3.upload_file(str(item), bucket, f"{key}/{item.relative_to(path).as_posix()}")
    else:
        s3.upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


class ReaderContract:
    """Subclass with ``reader_name``, ``suffix``, ``location`` and the three methods below."""

    reader_name: ClassVar[str]  # the registry entry under test
    suffix: ClassVar[str]
    location: ClassVar[str] = "local"  # or "s3"
    #: two spatial windows to compare (inside the file's shape)
    windows: ClassVar[list[tuple[slice, ...]]]

    # --- what each format says ------------------------------------------------------------
    def make(self, folder: Path) -> Path:
        """Write the test file (from the real sample data) under ``folder``."""
        raise NotImplementedError

    def expected(self, path: Path) -> dict[str, Any]:
        """``pixels`` (bands, *spatial), ``valid`` (*spatial) and ``physical``: {cell index
        tuple: physical coordinates of that cell's centre}, read by the format's library."""
        raise NotImplementedError

    def corrupt(self, path: Path, folder: Path) -> Path:
        """A spoiled copy of the file, named like it."""
        raise NotImplementedError

    # --- fixtures -------------------------------------------------------------------------
    # the file is made and read whole once per class (the tests only read it; the corrupt
    # test spoils a copy)
    @pytest.fixture(scope="class")
    def local_path(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return self.make(tmp_path_factory.mktemp(f"reader-{self.reader_name}"))

    def _place(self, path: Path, request: pytest.FixtureRequest) -> str:
        if self.location == "local":
            return str(path)
        bucket = request.getfixturevalue("s3_bucket")
        return upload(bucket, path.name, path)

    @pytest.fixture
    def uri(self, local_path: Path, request: pytest.FixtureRequest) -> str:
        return self._place(local_path, request)

    @pytest.fixture(scope="class")
    def truth(self, local_path: Path) -> dict[str, Any]:
        return self.expected(local_path)

    # --- the contract ---------------------------------------------------------------------
    def test_registry_picks_this_reader(self, uri: str) -> None:
        reader = reader_for(uri)
        assert reader.name == self.reader_name
        assert reader in readers().values() and readers()[reader.name] is reader
        source = open_source(uri, InputConfig())
        assert source.reader == reader.name and source.modality == reader.modality
        assert source.base_unit in ("m2", "um2", "mm3")
        # what the class says the reader can do, it does
        if source.supports_tissue_thumbnail:
            thumb, factor = source.thumbnail(4)
            assert factor >= 4 and thumb.shape[0] == len(source.bands)

    def test_windows_equal_a_full_read(self, uri: str, truth: dict[str, Any]) -> None:
        source = open_source(uri, InputConfig())
        assert source.shape == truth["pixels"].shape
        for box in [*self.windows, tuple(slice(0, n) for n in source.spatial_shape)]:
            pixels, valid = source.read(box)
            np.testing.assert_array_equal(pixels, truth["pixels"][(slice(None), *box)])
            np.testing.assert_array_equal(valid, truth["valid"][box])

    def test_valid_mask_follows_nodata(self, uri: str, truth: dict[str, Any]) -> None:
        """The valid mask is the format's own (GDAL masks, NaN), as the library says."""
        source = open_source(uri, InputConfig())
        _, valid = source.read(tuple(slice(0, n) for n in source.spatial_shape))
        assert valid.sum() == truth["valid"].sum()

    def test_pickles_without_handles_or_credentials(self, uri: str,
                                                    truth: dict[str, Any]) -> None:
        source = open_source(uri, InputConfig())
        blob = pickle.dumps(source)
        assert len(blob) < 64_000, "a reader ships only what to read, never pixels or handles"
        assert not any(secret in blob for secret in SECRETS)
        shipped: SourceBase = pickle.loads(blob)
        box = self.windows[0]
        np.testing.assert_array_equal(shipped.read(box)[0],
                                      truth["pixels"][(slice(None), *box)])

    def test_band_selection(self, uri: str, truth: dict[str, Any]) -> None:
        count = truth["pixels"].shape[0]
        order = [count, 1] if count > 1 else [1]
        source = open_source(uri, InputConfig(bands=order))
        assert source.bands == tuple(order)
        box = self.windows[0]
        np.testing.assert_array_equal(source.read(box)[0],
                                      truth["pixels"][[b - 1 for b in order]][(slice(None),
                                                                               *box)])
        with pytest.raises(UserError) as error:
            open_source(uri, InputConfig(bands=[count + 1]))
        assert f"band {count + 1} requested" in str(error.value)
        assert "\n" not in str(error.value)

    def test_spatial_reference(self, uri: str, truth: dict[str, Any]) -> None:
        """A cell's centre (index + 0.5) maps to the coordinates the library gives."""
        source = open_source(uri, InputConfig())
        for cell, want in truth["physical"].items():
            got = source.physical(np.asarray([cell], np.float64) + 0.5)[0]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    def test_corrupt_file_is_one_line_naming_it(self, local_path: Path, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
        spoiled_dir = tmp_path / "spoiled"
        spoiled_dir.mkdir()
        bad = self._place(self.corrupt(local_path, spoiled_dir), request)
        with pytest.raises(UserError) as error:  # a user error: never retried ...
            source = open_source(bad, InputConfig())
            source.read(tuple(slice(0, n) for n in source.spatial_shape))
        assert not isinstance(error.value, TransientError)
        message = str(error.value)
        assert message.startswith(f"{bad}: ") and "\n" not in message
