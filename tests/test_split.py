"""``stats.split: distance`` through the flow: touching discs laid on chunk corners and faces
are split into one object each, the same objects (ids included) for any chunk size, and
better than plain connected components against the known labels (instance F1 at IoU 0.5,
matched here independently with scipy's Hungarian assignment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from rasterio.transform import from_origin
from scipy.optimize import linear_sum_assignment

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import load_config
from tests.conftest import write_geotiff

SIZE = 256
CHUNK = 64


def touching_discs(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A noisy fluorescence-like image and its instance labels: discs of radius 5-9, in
    touching pairs and triples, several centred exactly on chunk corners and faces."""
    rng = np.random.default_rng(seed)
    centres = [(CHUNK, CHUNK, 8), (CHUNK, CHUNK + 14, 7), (2 * CHUNK, 2 * CHUNK, 9),
               (CHUNK, 2 * CHUNK, 6), (2 * CHUNK + 13, 2 * CHUNK, 7), (3 * CHUNK, 40, 8),
               (3 * CHUNK, 54, 6), (100, 3 * CHUNK, 7), (3 * CHUNK, 3 * CHUNK, 9)]
    while len(centres) < 70:  # the rest at random, many touching or overlapping a little
        r = int(rng.integers(5, 10))
        y, x = rng.integers(r + 2, SIZE - r - 2, size=2)
        if all(np.hypot(y - a, x - b) > 0.8 * (r + c) for a, b, c in centres):
            centres.append((int(y), int(x), r))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    distance = np.full((SIZE, SIZE), np.inf)
    truth = np.zeros((SIZE, SIZE), np.int32)
    for k, (y, x, r) in enumerate(centres, start=1):
        d = np.hypot(yy - y, xx - x) / r  # nearest centre (relative) wins shared cells
        inside = (d <= 1) & (d < distance)
        truth[inside], distance[inside] = k, d[inside]
    image = np.where(truth > 0, 180.0, 30.0) + rng.normal(0, 12, truth.shape)
    return np.clip(image, 0, 255).astype(np.uint8)[None], truth


def instance_f1(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> float:
    """F1 of objects matched one-to-one at IoU >= ``iou`` (NumPy contingency + Hungarian)."""
    n_p, n_t = int(pred.max()), int(truth.max())
    both = np.bincount(pred.ravel().astype(np.int64) * (n_t + 1) + truth.ravel(),
                       minlength=(n_p + 1) * (n_t + 1)).reshape(n_p + 1, n_t + 1)
    inter = both[1:, 1:].astype(float)
    union = both[1:, :].sum(1)[:, None] + both[:, 1:].sum(0)[None, :] - inter
    scores = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(-scores)
    tp = int((scores[rows, cols] >= iou).sum())
    return 2 * tp / (n_p + n_t)


@pytest.fixture(scope="module")
def discs(tmp_path_factory) -> tuple[Path, np.ndarray]:
    image, truth = touching_discs()
    path = tmp_path_factory.mktemp("discs") / "discs.tif"
    write_geotiff(path, image, None, from_origin(0, SIZE, 1, 1))
    return path, truth


def run(path: Path, out: Path, address: str, *overrides: str) -> dict:
    cfg = load_config(None, ["model.kind=otsu", "model.params={sigma: 1.0}",
                             "stats.max_object=40", *overrides])
    return segment_image(str(path), str(out), cfg.model_dump(mode="json"), address)


def test_split_is_exact_across_chunks_and_beats_components(discs, tmp_path, dask_address):
    path, truth = discs
    ids, classes = {}, {}
    for chunk in (CHUNK, 96, SIZE):
        result = run(path, tmp_path / f"c{chunk}", dask_address, "stats.split=distance",
                     f"tiling.chunk={chunk}")
        assert result["status"] == "succeeded"
        ids[chunk] = zarr.open_array(result["output_uri"], path="instances", mode="r")[:]
        classes[chunk] = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
        n = int(ids[chunk].max())
        assert result["instances"] == n == len(np.unique(ids[chunk])) - 1  # 1..n, no gaps
        rows = run_query(str(tmp_path / f"c{chunk}"), "SELECT instance_id, pixels FROM instances "
                                                 "ORDER BY instance_id")
        np.testing.assert_array_equal(rows["pixels"].to_numpy(), np.bincount(ids[chunk].ravel())[1:])
    for chunk in (CHUNK, 96):  # object for object, ids included, whatever the chunking
        np.testing.assert_array_equal(ids[chunk], ids[SIZE])
        np.testing.assert_array_equal(classes[chunk], classes[SIZE])
    plain = run(path, tmp_path / "plain", dask_address, "stats.instances=true",
                f"tiling.chunk={CHUNK}")
    components = zarr.open_array(plain["output_uri"], path="instances", mode="r")[:]
    split_f1, plain_f1 = instance_f1(ids[CHUNK], truth), instance_f1(components, truth)
    print(f"instance F1 at IoU 0.5: split {split_f1:.3f}, connected components {plain_f1:.3f}"
          f" ({int(truth.max())} discs)")
    assert split_f1 >= 0.9 and split_f1 > plain_f1 + 0.1
