"""Which failures are transient (retried) and which are the user's (never retried), for the
exceptions the readers' libraries really raise."""

from __future__ import annotations

import errno

import botocore.exceptions as boto
import pytest
from rasterio.errors import RasterioIOError

from segflow.tasks.errors import TransientError, UserError, io_error, retry_transient


def _client_error(code: str, status: int) -> boto.ClientError:
    return boto.ClientError({"Error": {"Code": code, "Message": code},
                             "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def _s3fs_wrapped(cause: BaseException) -> OSError:
    """What s3fs raises for a ClientError it has no mapping for: OSError(EIO) caused by it."""
    error = OSError(errno.EIO, str(cause))
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("exc", [
    _s3fs_wrapped(_client_error("ServiceUnavailable", 503)),
    _client_error("SlowDown", 503),
    _client_error("TooManyRequests", 429),
    boto.EndpointConnectionError(endpoint_url="http://s3"),
    boto.ReadTimeoutError(endpoint_url="http://s3"),
    ConnectionResetError("reset by peer"),
    RasterioIOError("HTTP response code: 503"),
], ids=lambda e: type(e).__name__)
def test_network_failures_are_transient(exc):
    assert isinstance(io_error("s3://b/k.tif", "cannot read", exc), TransientError)


@pytest.mark.parametrize("exc", [
    _client_error("NoSuchKey", 404),
    _client_error("AccessDenied", 403),
    boto.NoCredentialsError(),
    FileNotFoundError("k.tif"),
    RasterioIOError("'k.tif' not recognized as being in a supported file format"),
    ValueError("not a TIFF file"),
], ids=lambda e: type(e).__name__)
def test_bad_files_and_settings_are_the_users(exc):
    error = io_error("s3://b/k.tif", "cannot read", exc)
    assert isinstance(error, UserError) and "\n" not in str(error)


def test_only_transient_failures_are_tried_again():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("k.tif", "503")
        return "done"

    assert retry_transient(flaky, delay_s=0) == "done" and len(calls) == 3
    calls.clear()

    def broken() -> None:
        calls.append(1)
        raise UserError("k.tif", "not a TIFF file")

    with pytest.raises(UserError):
        retry_transient(broken, delay_s=0)
    assert len(calls) == 1
