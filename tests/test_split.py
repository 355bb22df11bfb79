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
from segflow.tasks.errors import SegflowError
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
                             "stats.max_object=40", "output.pyramid=false", *overrides])
    return segment_image(str(path), str(out), cfg.model_dump(mode="json"), address)


def test_split_is_exact_across_chunks_and_beats_components(discs, tmp_path, dask_address):
    path, truth = discs
    ids, classes = {}, {}
    for chunk in (CHUNK, SIZE):
        result = run(path, tmp_path / f"c{chunk}", dask_address, "stats.split=distance",
                     f"tiling.chunk={chunk}")
        assert result["status"] == "succeeded"
        ids[chunk] = zarr.open_array(result["output_uri"], path="labels/instances/0", mode="r")[:]
        classes[chunk] = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
        n = int(ids[chunk].max())
        assert result["instances"] == n == len(np.unique(ids[chunk])) - 1  # 1..n, no gaps
        rows = run_query(str(tmp_path / f"c{chunk}"), "SELECT instance_id, pixels FROM instances "
                                                 "ORDER BY instance_id")
        np.testing.assert_array_equal(rows["pixels"].to_numpy(),
                                      np.bincount(ids[chunk].ravel())[1:])
    # object for object, ids included, whatever the chunking
    np.testing.assert_array_equal(ids[CHUNK], ids[SIZE])
    np.testing.assert_array_equal(classes[CHUNK], classes[SIZE])
    plain = run(path, tmp_path / "plain", dask_address, "stats.instances=true",
                f"tiling.chunk={CHUNK}")
    components = zarr.open_array(plain["output_uri"], path="labels/instances/0", mode="r")[:]
    split_f1, plain_f1 = instance_f1(ids[CHUNK], truth), instance_f1(components, truth)
    print(f"instance F1 at IoU 0.5: split {split_f1:.3f}, connected components {plain_f1:.3f}"
          f" ({int(truth.max())} discs)")
    assert split_f1 >= 0.9 and split_f1 > plain_f1 + 0.1


def touching_ellipses(seed: int = 5, size: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """A 16-bit fluorescence-like image (dim and bright nuclei, shot noise, uneven background)
    of touching ellipses, 7-13 px semi-axes at random angles, and their instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), np.int32)
    score = np.full((size, size), np.inf)
    brightness = np.zeros(size * size // 50 + 2)
    placed: list[tuple[int, int, float]] = []
    for _ in range(4000):
        if len(placed) >= 120:
            break
        a, b = rng.uniform(7, 13), rng.uniform(5, 9)
        y, x = rng.uniform(10, size - 10, size=2)
        if any(np.hypot(y - p, x - q) < 0.75 * (a + r) for p, q, r in placed):
            continue
        t = rng.uniform(0, np.pi)
        u = ((xx - x) * np.cos(t) + (yy - y) * np.sin(t)) / a
        v = (-(xx - x) * np.sin(t) + (yy - y) * np.cos(t)) / b
        d = np.hypot(u, v)
        k = len(placed) + 1
        inside = (d <= 1) & (d < score)
        truth[inside], score[inside] = k, d[inside]
        brightness[k] = rng.uniform(2500, 9000)
        placed.append((y, x, a))
    signal = brightness[truth] * np.where(truth > 0, 1 - 0.3 * score ** 2, 0)
    background = 600 + 300 * xx / size
    image = rng.poisson(signal + background) + rng.normal(0, 150, truth.shape)
    return np.clip(image, 0, 65535).astype(np.uint16)[None], truth


def test_nuclei_config_splits_touching_16bit_nuclei(tmp_path, dask_address):
    image, truth = touching_ellipses()
    path = write_geotiff(tmp_path / "nuclei.tif", image, None, from_origin(0, 384, 1, 1))
    config = Path(__file__).parents[1] / "configs" / "nuclei.yaml"
    found = {}
    for name, extra in (("split", []), ("components", ["stats.split=none",
                                                       "stats.instances=true"])):
        cfg = load_config(config, ["tiling.chunk=128", "output.pyramid=false", *extra])
        result = segment_image(str(path), str(tmp_path / name), cfg.model_dump(mode="json"),
                               dask_address)
        found[name] = zarr.open_array(result["output_uri"], path="labels/instances/0", mode="r")[:]
    split, plain = instance_f1(found["split"], truth), instance_f1(found["components"], truth)
    print(f"nuclei.yaml on {int(truth.max())} touching 16-bit ellipses: instance F1 at IoU 0.5 "
          f"split {split:.3f} ({int(found['split'].max())} objects), connected components "
          f"{plain:.3f} ({int(found['components'].max())} objects)")
    assert split >= 0.85 and split > plain + 0.05


def test_pathology_split_counts_nuclei_and_reports_cut_clumps(tmp_path, dask_address):
    """The H&E path with the split: haematoxylin-positive objects counted per mm² of tissue
    (max_object given in µm). At ~1 µm/px nuclei-rich tissue forms clumps of hundreds of µm,
    more than the halo: the run says so, and with ``stats.on_cut=error`` refuses in one line."""
    slide = Path(__file__).parent / "data" / "cmu1_pyramid.tif"
    config = Path(__file__).parents[1] / "configs" / "pathology.yaml"
    split = ["tiling.chunk=512", "stats.split=distance", "stats.things=[hematoxylin_positive]",
             "stats.max_object=40 um", "output.pyramid=false"]
    cfg = load_config(config, split)
    result = segment_image(str(slide), str(tmp_path / "warn"), cfg.model_dump(mode="json"),
                           dask_address)
    ids = zarr.open_array(result["output_uri"], path="labels/instances/0", mode="r")[:]
    mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
    nuclei = {r["class_name"]: r for r in result["class_stats"]}["hematoxylin_positive"]
    valid_mm2 = int((mask != 255).sum()) * (0.998e-3) ** 2  # level 1 of the 0.499 µm pyramid
    assert nuclei["objects"] == int(ids.max()) == result["instances"] > 100
    assert nuclei["density"] == pytest.approx(nuclei["objects"] / valid_mm2, rel=1e-3)
    cfg = load_config(config, [*split, "stats.on_cut=error"])
    with pytest.raises(SegflowError) as error:
        segment_image(str(slide), str(tmp_path / "error"), cfg.model_dump(mode="json"),
                      dask_address)
    assert "raise stats.max_object (now 41 px)" in str(error.value)
    assert "\n" not in str(error.value)


def test_split_is_exact_across_chunks_in_3d(tmp_path, dask_address):
    """Touching balls in a NIfTI volume, split in 24-voxel chunks and in one: same objects."""
    import nibabel as nib

    rng = np.random.default_rng(2)
    zz, yy, xx = np.mgrid[:48, :48, :48]
    volume = np.zeros((48, 48, 48))
    for z, y, x in [(16, 16, 16), (16, 16, 25), (32, 32, 32), (32, 40, 32), (8, 40, 12),
                    (40, 8, 40), (24, 24, 8)]:
        volume[np.sqrt((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) <= 5.5] = 1
    volume = (volume * 200 + rng.normal(30, 10, volume.shape)).astype(np.float32)
    path = tmp_path / "balls.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.5, 0.5, 0.5, 1])), path)
    ids = {}
    for chunk in (24, 48):
        cfg = load_config(None, ["model.params={sigma: 1.0}", "stats.split=distance",
                                 "output.pyramid=false",
                                 "stats.max_object=14", f"tiling.chunk={chunk}",
                                 "tiling.halo=0"])
        result = segment_image(str(path), str(tmp_path / str(chunk)),
                               cfg.model_dump(mode="json"), dask_address)
        ids[chunk] = zarr.open_array(result["output_uri"], path="labels/instances/0", mode="r")[:]
    assert int(ids[48].max()) == 7  # the two touching pairs split, every ball one object
    np.testing.assert_array_equal(ids[24], ids[48])


def test_tiles_merge_by_ownership_like_a_whole_window():
    """The tile merge inside a chunk (deep instance models): a deterministic tile model
    (connected components of a mask) gives, for any tile size, the whole window's labels."""
    from scipy.ndimage import find_objects
    from skimage.measure import label

    from segflow.tasks.models.instance import (
        Objects,
        edge_layer,
        merge_tiles,
        reaching,
        tile_windows,
    )

    image, _ = touching_discs(seed=11)
    mask = image[0] > 100
    shape = mask.shape
    whole = label(mask, connectivity=1)
    overlap = max(s.stop - s.start for box in find_objects(whole) for s in box)
    for tile in (2 * overlap + 16, 2 * overlap + 40, 2 * overlap + 100):
        done = []
        for read, core in tile_windows(shape, tile, overlap):
            labels = label(mask[read], connectivity=1).astype(np.int32)
            n = int(labels.max())
            cut = reaching(labels, n, edge_layer(read, shape))
            done.append((read, core, Objects(labels, np.ones(n, np.int64),
                                              np.ones(n, np.float32), cut)))
        merged = merge_tiles(shape, done)
        assert not merged.cut.any()  # every object fits in the overlap
        np.testing.assert_array_equal(label(merged.labels, connectivity=1), whole)
        assert merged.count == int(whole.max())


def test_tiles_without_objects_merge_to_none():
    from segflow.tasks.models.instance import merge_tiles, no_objects, tile_windows

    tiles = [(read, core, no_objects(tuple(s.stop - s.start for s in read)))
             for read, core in tile_windows((50, 70), 32, 8)]
    merged = merge_tiles((50, 70), tiles)
    assert merged.count == 0 and not merged.labels.any()


def test_instance_metrics_equal_an_independent_matching(discs, tmp_path, dask_address):
    """``stats.ground_truth_instances``: the flow's ``instance_metrics`` row equals a NumPy
    matching of the written ids against the true labels (dense IoU matrix, Hungarian)."""
    path, truth = discs
    truth_path = write_geotiff(tmp_path / "truth.tif", truth[None].astype(np.int32), None,
                               from_origin(0, SIZE, 1, 1))
    result = run(path, tmp_path / "out", dask_address, "stats.split=distance",
                 f"tiling.chunk={CHUNK}", f"stats.ground_truth_instances={truth_path}")
    ids = zarr.open_array(result["output_uri"], path="labels/instances/0", mode="r")[:]
    row = run_query(str(tmp_path / "out"), "SELECT * FROM instance_metrics").to_pylist()[0]
    n_p, n_t = int(ids.max()), int(truth.max())
    both = np.bincount(ids.ravel().astype(np.int64) * (n_t + 1) + truth.ravel(),
                       minlength=(n_p + 1) * (n_t + 1)).reshape(n_p + 1, n_t + 1)
    inter = both[1:, 1:].astype(float)
    iou = inter / (both[1:, :].sum(1)[:, None] + both[:, 1:].sum(0)[None, :] - inter)
    r, c = linear_sum_assignment(-iou)
    matched = iou[r, c][iou[r, c] >= 0.5]
    assert (row["tp"], row["fp"], row["fn"]) == (len(matched), n_p - len(matched),
                                                 n_t - len(matched))
    assert row["f1"] == pytest.approx(instance_f1(ids, truth))
    assert row["precision"] == pytest.approx(len(matched) / n_p)
    assert row["recall"] == pytest.approx(len(matched) / n_t)
    assert row["mean_matched_iou"] == pytest.approx(matched.mean())
