"""S3 in and out, against moto's standalone server: sources, mask stores, catalog and query on
s3://, checksums from object metadata, retried transient faults, and no credential in outputs."""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import query_frame, run_query
from segflow.tasks.config import InputConfig, load_config
from segflow.tasks.errors import SegflowError, UserError
from segflow.tasks.runtime.storage import zarr_options
from segflow.tasks.sources.identity import source_checksum
from segflow.tasks.sources.raster import open_raster
from segflow.tasks.sources.registry import open_source
from tests.conftest import DATA, write_geotiff

CFG = load_config(overrides=["model.kind=otsu", "tiling.chunk=512", "output.vectors=true",
                             "output.export=true"]).model_dump(mode="json")
#: credentials of the client process during the S3 run; moto accepts any
KEY_ID, SECRET = "AKIASEGFLOWLEAKCHECK", "segflow-secret-must-not-leak"


def _put(bucket: str, key: str, path: Path) -> str:
    boto3.client("s3").upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _mask(uri: str) -> np.ndarray:
    return zarr.open_array(store=uri, path="0", mode="r", **zarr_options(uri))[:]


@pytest.fixture(scope="module")
def s3_run(s3_endpoint, prefect_server, dask_address, tmp_path_factory) -> dict:
    """The real Landsat scene segmented from s3:// into s3://, and the same file locally."""
    bucket = "segflow-s3-run"
    boto3.client("s3").create_bucket(Bucket=bucket)
    source = _put(bucket, "scenes/scene.tif", DATA / "rgb_byte.tif")
    root = f"s3://{bucket}/results"
    local_root = str(tmp_path_factory.mktemp("local"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        remote = segment_image(source, root, CFG, dask_address)
        with pytest.raises(SegflowError) as missing:
            segment_image(f"s3://{bucket}/scenes/missing.tif", root, CFG, dask_address)
    local = segment_image(str(DATA / "rgb_byte.tif"), local_root, CFG, dask_address)
    return {"bucket": bucket, "source": source, "root": root, "remote": remote,
            "local": local, "missing": missing.value}


def test_s3_mask_equals_local_mask(s3_run):
    remote, local = s3_run["remote"], s3_run["local"]
    assert remote["status"] == "succeeded"
    assert remote["output_uri"].startswith(f"{s3_run['root']}/masks/")
    mask = _mask(remote["output_uri"])
    np.testing.assert_array_equal(mask, _mask(local["output_uri"]))
    assert (mask == 1).any() and (mask == 0).any() and (mask == 255).any()  # fg, bg, nodata
    group = zarr.open_group(store=remote["output_uri"], mode="r",
                            **zarr_options(remote["output_uri"]))
    meta = group.attrs["segflow"]
    assert meta["complete"] and meta["levels"] == 3 and group["2"].shape == (180, 198)
    assert meta["source_uri"] == s3_run["source"]
    assert meta["source_checksum"].startswith("etag:") and remote["reused"] is False


def test_files_for_other_tools_on_s3_equal_the_local_ones(s3_run, tmp_path):
    """Polygons and the COG are staged locally and uploaded whole, one PUT each."""
    remote, local = s3_run["remote"], s3_run["local"]
    written = _objects(s3_run["bucket"], "results/")
    name = remote["image_id"]
    assert {f"results/vectors/{name}.parquet", f"results/exports/{name}.tif",
            f"results/exports/{name}.tif.aux.xml"} <= set(written)
    assert not [k for k in written if k.endswith(".partial")]
    local_root = Path(local["output_uri"]).parents[1]
    here = pq.read_table(local_root / "vectors" / f"{local['image_id']}.parquet")
    there = pq.read_table(pa.BufferReader(written[f"results/vectors/{name}.parquet"]))
    # rows come in the order chunks finish: compare them by region id
    here, there = (t.drop(["image_id"]).sort_by("region_id") for t in (here, there))
    assert there.equals(here) and there.num_rows > 0
    (tmp_path / "cog.tif").write_bytes(written[f"results/exports/{name}.tif"])
    with rasterio.open(tmp_path / "cog.tif") as a, \
            rasterio.open(local_root / "exports" / f"{local['image_id']}.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    uris = run_query(s3_run["root"], "select uri from outputs").column("uri").to_pylist()
    assert sorted(uris) == [f"{s3_run['root']}/exports/{name}.tif",
                            f"{s3_run['root']}/stac/{name}/{name}.json",
                            f"{s3_run['root']}/vectors/{name}.parquet"]
    item = json.loads(written[f"results/stac/{name}/{name}.json"])
    assert item["assets"]["export"]["href"] == f"../../exports/{name}.tif"
    collection = json.loads(written["results/stac/collection.json"])
    assert {"rel": "item", "href": f"./{name}/{name}.json",
            "type": "application/geo+json"} in collection["links"]


def test_s3_outputs_hold_no_credentials(s3_run):
    written = _objects(s3_run["bucket"], "results/")
    kinds = {k.rsplit("/", 1)[-1].rsplit(".", 1)[-1] for k in written}
    assert {"json", "parquet"} <= kinds  # zarr metadata/attributes and catalog tables
    for secret in (KEY_ID, SECRET, "testing"):
        assert not [k for k, body in written.items() if secret.encode() in body], secret
        assert secret not in str(s3_run["missing"])
    failed = run_query(s3_run["root"], "select error from runs where status = 'failed'")
    [error] = failed.column("error").to_pylist()
    assert "not a readable raster" in error and SECRET not in error
    assert str(s3_run["missing"]).startswith(f"s3://{s3_run['bucket']}/scenes/missing.tif: ")


def test_query_api_on_s3_root(s3_run):
    mask = _mask(s3_run["local"]["output_uri"])
    frame = query_frame(s3_run["root"], "select c.class_name, c.pixels from class_stats c "
                        "join runs r using (run_id) where r.status = 'succeeded' "
                        "order by c.class_id")
    assert dict(zip(frame.class_name, frame.pixels, strict=True)) == {
        "background": int((mask == 0).sum()), "foreground": int((mask == 1).sum())}
    files = _objects(s3_run["bucket"], "results/catalog/")
    tables = {k.split("/")[2] for k in files}
    # one folder per table (Athena/Spark locations); `outputs` lists the polygons, the COG
    # and the STAC item
    assert tables == {"runs", "class_stats", "outputs"}
    assert all(k.endswith(".parquet") for k in files)


def test_cli_query_on_s3_root(s3_run, cli):
    sql = ("select status, count(*) as n, sum(chunks_total) as chunks from runs "
           "group by status order by status")
    code, stdout, stderr = cli("query", sql, "--out", s3_run["root"], "--format", "json")
    assert code == 0, stderr
    assert json.loads(stdout) == [{"status": "failed", "n": 1, "chunks": None},
                                  {"status": "succeeded", "n": 1, "chunks": 4}]


def test_checksum_follows_object_versions(s3_bucket, tmp_path):
    scene = _put(s3_bucket, "scene.tif", DATA / "rgb_byte.tif")
    first = source_checksum(scene)
    assert first.startswith("etag:") and first.endswith(":1745956")  # ETag and size
    assert source_checksum(scene) == first
    assert open_raster(scene).spatial_shape == (718, 791)

    small = write_geotiff(tmp_path / "small.tif", np.full((1, 40, 50), 7, np.uint8),
                          "EPSG:32633", from_origin(500000, 7000000, 10, 10))
    _put(s3_bucket, "scene.tif", small)
    second = source_checksum(scene)
    assert second != first and source_checksum(scene) == second
    # the same process reads the new bytes: GDAL's cache does not serve the old object
    assert open_raster(scene).spatial_shape == (40, 50)
    _put(s3_bucket, "scene.tif", DATA / "rgb_byte.tif")
    assert source_checksum(scene) == first  # same bytes, same ETag

    volume = f"s3://{s3_bucket}/volume.zarr"
    array = zarr.create_array(store=volume, shape=(8, 8, 8), chunks=(4, 4, 4), dtype="uint8",
                              **zarr_options(volume))
    array[:] = 1
    before = source_checksum(volume)
    assert before.startswith("etag:sha256:") and source_checksum(volume) == before
    array[:4, :4, :4] = 2
    assert source_checksum(volume) != before


def test_any_fsspec_url_reads_like_a_local_file():
    """A URL GDAL has no driver for goes through fsspec (rasterio's opener); with no ETag the
    checksum is the content hash, the same as the local file's."""
    local = str(DATA / "rgb_byte.tif")
    memory = fsspec.filesystem("memory")
    memory.pipe("/segflow-test/scene.tif", Path(local).read_bytes())
    uri = "memory://segflow-test/scene.tif"
    try:
        reader, expected = open_raster(uri), open_raster(local)
        assert reader.spatial_ref() == expected.spatial_ref()
        box = (slice(100, 300), slice(250, 500))
        for got, want in zip(reader.read(box), expected.read(box), strict=True):
            np.testing.assert_array_equal(got, want)
        assert source_checksum(uri) == source_checksum(local)
    finally:
        memory.rm("/segflow-test", recursive=True)


# --- fault injection -----------------------------------------------------------------------
# Written by hand: no library injects faults in front of a standalone S3 endpoint. The proxy
# runs in its own (forked) process: GDAL holds the GIL during some of its HTTP calls, so a
# proxy thread in the reading process could never answer them.

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
UNAVAILABLE = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
               b"<Message>Service is unable to handle request.</Message></Error>")
HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "date", "server"}


class _FaultyProxy(ThreadingHTTPServer):
    """Relays requests to ``upstream``; the first ``budget`` requests matching a rule's method
    and path fragment get a 503 with ``fault`` (``SlowDown``, as S3 answers when throttling).
    ``seen`` counts every request matching each rule, failed or relayed."""

    daemon_threads = True

    def __init__(self, upstream: str, rules: list[tuple[str | None, str, int]],
                 fault: bytes = SLOW_DOWN) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream = urlsplit(upstream).netloc
        self.rules = rules
        self.fault = fault
        context = multiprocessing.get_context("fork")
        self.left = context.Array("i", [r[2] for r in rules])
        self.seen = context.Array("i", [0] * len(rules))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def injected(self) -> list[int]:
        return [rule[2] - left for rule, left in zip(self.rules, self.left[:], strict=True)]

    def should_fail(self, method: str, path: str) -> bool:
        fail = False
        with self.left.get_lock():
            for i, (want, fragment, _) in enumerate(self.rules):
                if want in (None, method) and fragment in path:
                    self.seen[i] += 1
                    if self.left[i] > 0 and not fail:
                        self.left[i] -= 1
                        fail = True
        return fail


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.server.should_fail(self.command, self.path):
            status, headers, data = 503, [("Content-Type", "application/xml")], self.server.fault
            size = str(len(data))
        else:
            upstream = http.client.HTTPConnection(self.server.upstream, timeout=60)
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
            response = upstream.getresponse()
            status, headers, data = response.status, response.getheaders(), response.read()
            upstream.close()
            size = response.getheader("Content-Length", "0") if self.command == "HEAD" \
                else str(len(data))
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", size)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay


def test_transient_s3_faults_are_retried(s3_bucket, s3_endpoint, s3_run, monkeypatch):
    source = _put(s3_bucket, "scene.tif", DATA / "rgb_byte.tif")
    root = f"s3://{s3_bucket}/results"
    rules = [(None, f"/{s3_bucket}/scene.tif", 2),  # source reads (GDAL) and metadata
             ("PUT", "/masks/", 2),                  # store creation
             ("PUT", "/0/c/", 2),                    # chunk writes on the Dask workers
             ("PUT", "/catalog/", 2)]                # catalog rows
    with _behind_proxy(monkeypatch, rules) as proxy:
        cfg = {**CFG, "cluster": {**CFG["cluster"], "n_workers": 1, "threads_per_worker": 2}}
        result = segment_image(source, root, cfg, None)  # its own LocalCluster, behind the proxy
    assert proxy.injected() == [2, 2, 2, 2]  # every rule's faults were served ...
    assert result["status"] == "succeeded"  # ... and retried by GDAL / botocore
    np.testing.assert_array_equal(_mask(result["output_uri"]),
                                  _mask(s3_run["local"]["output_uri"]))


@contextlib.contextmanager
def _behind_proxy(monkeypatch, rules, fault: bytes = SLOW_DOWN):
    """Every S3 call of this process (and of workers it starts) goes through a fault proxy."""
    proxy = _FaultyProxy(os.environ["AWS_ENDPOINT_URL"], rules, fault)
    server = multiprocessing.get_context("fork").Process(target=proxy.serve_forever,
                                                         daemon=True)
    server.start()
    upstream = os.environ["AWS_ENDPOINT_URL"]
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy
    finally:
        monkeypatch.setenv("AWS_ENDPOINT_URL", upstream)
        server.terminate()
        server.join(10)
        proxy.server_close()


def test_transient_fault_at_open_is_retried_and_a_corrupt_file_is_not(s3_bucket, tmp_path,
                                                                      monkeypatch,
                                                                      dask_address):
    """The first two reads of a slide on S3 answer 503 with botocore's and s3fs's own retries
    off: the ``open-and-plan`` stage fails twice with a transient error, Prefect retries it and
    the run gives the local mask. A corrupt slide fails once, in one line, never retried."""
    slide = DATA / "cmu1_pyramid.tif"
    source = _put(s3_bucket, "slide.tif", slide)
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide, whatever its name says\n" * 1000)
    corrupt = _put(s3_bucket, "bad.svs", bad)
    cfg = load_config(overrides=["model.kind=stain", "tiling.chunk=1024",
                                 "input.target_mpp=2"]).model_dump(mode="json")
    local = segment_image(str(slide), str(tmp_path / "local"), cfg, dask_address)
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no botocore retries behind segflow's
    rules = [("GET", f"/{s3_bucket}/slide.tif", 2), ("GET", f"/{s3_bucket}/bad.svs", 0)]
    with _behind_proxy(monkeypatch, rules, UNAVAILABLE) as proxy:
        result = segment_image(source, f"s3://{s3_bucket}/results", cfg, dask_address)
        assert proxy.injected() == [2, 0]
        before = proxy.seen[1]
        with pytest.raises(UserError) as once:
            open_source(corrupt, InputConfig())
        one_open = proxy.seen[1] - before
        with pytest.raises(UserError) as failed:
            segment_image(corrupt, f"s3://{s3_bucket}/results", cfg, dask_address)
        flow_opens = proxy.seen[1] - before - one_open
    assert result["status"] == "succeeded" and result["modality"] == "slide"
    np.testing.assert_array_equal(_mask(result["output_uri"]), _mask(local["output_uri"]))
    assert one_open > 0 and flow_opens == one_open  # opened once: a user error is not retried
    assert str(failed.value) == str(once.value) and "\n" not in str(failed.value)
    assert str(failed.value).startswith(f"{corrupt}: not a readable slide")
