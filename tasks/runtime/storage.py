"""Remote I/O settings in one place: fsspec/s3fs options and the rasterio/GDAL environment.

Both are built from the standard AWS environment (``AWS_ENDPOINT_URL[_S3]``, ``AWS_PROFILE``,
``AWS_REGION``/``AWS_DEFAULT_REGION``; keys and session tokens are resolved by botocore and
boto3 themselves), so a Dask worker gets the same settings as the client from its own
environment. Nothing here returns or stores a credential: options carry only the endpoint,
profile name and region, which are safe to pickle to workers and to log.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
import rasterio
from fsspec.implementations.local import LocalFileSystem
from rasterio.io import DatasetReader
from rasterio.session import AWSSession, DummySession

#: remote inputs are fetched in blocks of this size, kept in an LRU block cache: TIFF directories
#: and tiles are read at random offsets, and s3fs's default (50 MiB read-ahead) would fetch most
#: of an object per window; with this a window read fetches about its own bytes
READ_BLOCK = 1 << 18
_S3 = ("s3://", "s3a://")


def is_local(uri: str) -> bool:
    return fsspec.utils.get_protocol(uri) in LocalFileSystem.protocol


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def fs_options(uri: str) -> dict[str, Any]:
    """fsspec storage options for ``uri``: for S3 the endpoint, profile and region.

    They are passed explicitly (botocore would also read them) so that fsspec's instance cache
    keys on them: a process whose endpoint changes gets a new filesystem, not a stale one.
    """
    if not uri.startswith(_S3):
        return {}
    options: dict[str, Any] = {}
    if endpoint := _endpoint():
        options["endpoint_url"] = endpoint
    if profile := os.environ.get("AWS_PROFILE"):
        options["profile"] = profile
    if region := _region():
        options["client_kwargs"] = {"region_name": region}
    return options


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    return fsspec.core.url_to_fs(uri, **fs_options(uri))


def open_input(uri: str, compression: str | None = None) -> IO[bytes]:
    """A lazily read binary file (range requests of ``READ_BLOCK`` on object stores), to be
    used in a ``with``; ``compression="infer"`` decompresses by suffix (``.gz``) as it reads."""
    fs, path = filesystem(uri)
    return fs.open(path, "rb", block_size=READ_BLOCK, cache_type="blockcache",
                   compression=compression)


def zarr_options(uri: str) -> dict[str, Any]:
    """Keyword arguments for ``zarr.open*(store=uri, ...)``: storage options for a URL (zarr
    refuses them for a local path)."""
    return {} if is_local(uri) else {"storage_options": fs_options(uri)}


def raster_env(uri: str) -> rasterio.Env:
    """The GDAL environment to open ``uri`` with rasterio.

    For S3 the session comes from boto3 (keys, token, profile, region as boto3 resolves them);
    a custom endpoint such as MinIO or moto is given to GDAL as host:port, plain HTTP and
    path-style addressing. HTTP 429/5xx are retried with back-off; no directory listing on
    open; and remote files are not cached between opens, so an object replaced in place is
    read anew (GDAL otherwise serves the old bytes to the same process).
    """
    if not uri.startswith("s3://"):
        # no session: rasterio would otherwise build a boto3 session for every local open
        # whenever AWS keys are in the environment (tens of ms each, per image and chunk)
        return rasterio.Env(session=DummySession())
    options: dict[str, Any] = {"GDAL_HTTP_MAX_RETRY": "5", "GDAL_HTTP_RETRY_DELAY": "0.5",
                               "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
                               "CPL_VSIL_CURL_NON_CACHED": "/vsis3/"}
    endpoint = _endpoint()
    if endpoint:
        parts = urlsplit(endpoint)
        options.update(AWS_HTTPS="NO" if parts.scheme == "http" else "YES",
                       AWS_VIRTUAL_HOSTING="FALSE")
        endpoint = parts.netloc
    session = AWSSession(profile_name=os.environ.get("AWS_PROFILE"), region_name=_region(),
                         endpoint_url=endpoint)
    return rasterio.Env(session=session, **options)


@contextmanager
def raster_dataset(uri: str) -> Iterator[DatasetReader]:
    """``uri`` opened with rasterio: local files and S3 by GDAL itself (``/vsis3/``, in the
    environment above), any other fsspec URL through its fsspec filesystem (rasterio's opener),
    so gs://, az://, https:// ... use the same credentials as the rest of segflow."""
    native = is_local(uri) or uri.startswith("s3://")
    # GeoTIFF (or a GDAL VRT of them) only: GDAL would also open a PNG or JPEG that was renamed
    # .tif, by its content
    driver = "VRT" if uri.lower().endswith(".vrt") else "GTiff"
    with raster_env(uri), rasterio.open(uri, driver=driver,
                                        opener=None if native else filesystem(uri)[0]) as ds:
        yield ds


@contextmanager
def staged(uri: str) -> Iterator[Path]:
    """A local path to write ``uri``'s content to; it becomes ``uri`` when the block ends
    without an error (local: a rename in its folder; object stores: one upload), and is
    removed otherwise, so a file appears whole or not at all (catalog tables, exports)."""
    fs, path = filesystem(uri)
    if is_local(uri):
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            yield work
            os.replace(work, final)
        finally:
            work.unlink(missing_ok=True)
        return
    folder = Path(tempfile.mkdtemp(prefix="segflow-staged-"))
    try:
        work = folder / Path(path).name
        yield work
        fs.put_file(str(work), path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
