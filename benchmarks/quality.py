"""Quality of every shipped config against real ground truth, one table: config, data, metric,
score, seconds. The flow's own metrics score each row (``stats.ground_truth``: the streamed
confusion matrix; ``stats.ground_truth_instances``: instance matching at IoU 0.5), except where
a row says otherwise.

- ``landcover.yaml`` (k-means, k = 5) and ``landcover_unet.yaml`` (the demo U-Net) against the
  GRASS ``landclass96`` map of the NC Landsat scene; the U-Net on the eastern 35 % it never saw
  in training (the western columns are nodata in the truth written here). k-means clusters
  carry no class, so each cluster is named after the truth class it overlaps most (the usual
  labelling of an unsupervised map) and those rows are counted in NumPy from the written mask.
- ``water.yaml`` (MNDWI > 0): water precision and recall against landclass96's water class.
- ``sentinel2_water.yaml``: the same rule on the scene made into a Sentinel-2-like STAC item
  (per-band COGs, NIR and SWIR1 at 57 m, synthetic SCL clouds masked), against the same class.
- ``glacier.yaml`` (Otsu on blue): snow/ice against the Randolph Glacier Inventory 6.0 mask of
  a Landsat 7 Everest scene (benchmarks/data).
- ``pathology.yaml`` (stain): tissue (tissue + haematoxylin-positive) against histolab's
  algorithmic tissue mask of a TCGA slide (benchmarks/data; computed at 1/10 scale, so it is
  repeated 10 x 10 onto the slide's grid), from the flow's confusion table.
- ``nuclei.yaml``: instance F1 on the synthetic touching nuclei of tests/test_split.py.
- ``mri.yaml`` on the MNI ICBM152 2009a template (nilearn's wheel: T1 and its GM/WM maps; truth
  = each brain voxel's most probable tissue, CSF = 1 - GM - WM), degraded here with a smooth
  multiplicative bias field and Rician noise at several levels, with the bias correction on and
  off (``model.params.iterations=0``). Voxels outside the template's brain have no truth class,
  so the flow's matrix leaves them out; the share of brain voxels the brain mask leaves out,
  and the non-brain voxels it labels tissue, are counted in NumPy from the written mask.

    .venv/bin/pip install -e '.[test,bench]'
    .venv/bin/python benchmarks/quality.py            # the table, as Markdown
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO  # noqa: E402
from segflow.flows.segment import segment_image  # noqa: E402
from segflow.tasks.catalog.query import run_query  # noqa: E402
from segflow.tasks.config import load_config  # noqa: E402
from tests.mni import degrade, template, write  # noqa: E402

DATA = REPO / "benchmarks" / "data"
LANDSAT = REPO / "samples" / "nc_lsat7_2000_b12345.tif"
LANDCLASS = REPO / "samples" / "nc_landclass96.tif"
LANDCLASS_NAMES = ("developed", "agriculture", "herbaceous", "shrubland", "forest", "water",
                   "sediment")
#: (Rician noise as a share of the maximum, bias field amplitude)
MRI_LEVELS = ((0.0, 0.0), (0.03, 0.2), (0.03, 0.4), (0.05, 0.2))


def run(config: str, image: Path, out: Path, *settings: str) -> tuple[dict[str, Any], float]:
    """One flow run of a shipped config; its result and wall seconds."""
    cfg = load_config(REPO / "configs" / config, list(settings))
    clock = time.perf_counter()
    result = segment_image(str(image), str(out), cfg.model_dump(mode="json"))
    return result, time.perf_counter() - clock


def row(config: str, data: str, metric: str, score: float, seconds: float) -> dict[str, Any]:
    print(f"{config} | {data} | {metric} {score:.3f}", flush=True)
    return {"config": config, "data": data, "metric": metric, "score": score,
            "seconds": seconds}


def write_like(path: Path, values: np.ndarray, template_path: Path, **profile: Any) -> Path:
    """A one-band GeoTIFF of ``values`` on ``template_path``'s grid."""
    with rasterio.open(template_path) as src:
        meta = {**src.profile, "count": 1, "dtype": values.dtype.name, **profile}
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(values, 1)
    return path


def class_rows(config: str, data: str, result: dict, seconds: float, names: tuple[str, ...],
               kinds: tuple[str, ...] = ("IoU", "Dice")) -> list[dict]:
    """Per-class scores from the flow's ``metrics`` for the classes named."""
    return [row(config, data, f"{kind} {m['class_name']}", m[kind.lower()], seconds)
            for m in result["metrics"] if m["class_name"] in names for kind in kinds]


def kmeans_rows(scratch: Path) -> list[dict]:
    """k-means clusters named by majority overlap with landclass96, then IoU per class."""
    result, seconds = run("landcover.yaml", LANDSAT, scratch / "kmeans")
    mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:].astype(np.int64)
    with rasterio.open(LANDCLASS) as src:
        truth = src.read(1)
        known = (truth >= 1) & (truth <= 7) & (mask != 255)
    k = int(mask[mask != 255].max()) + 1
    table = np.zeros((k, 8), np.int64)
    np.add.at(table, (mask[known], truth[known].astype(np.int64)), 1)
    named = table.argmax(axis=1)  # cluster -> the truth class it overlaps most
    predicted = np.where(known, named[np.clip(mask, 0, k - 1)], 0)
    data = "NC Landsat 2000 vs landclass96 (clusters named by majority)"
    rows, ious = [], []
    for c, name in enumerate(LANDCLASS_NAMES, start=1):
        a, b = known & (predicted == c), known & (truth == c)
        iou = float((a & b).sum() / (a | b).sum())
        ious.append(iou)
        if c in named:
            rows.append(row("landcover.yaml", data, f"IoU {name}", iou, seconds))
    rows.append(row("landcover.yaml", data, "mean IoU, 7 classes", float(np.mean(ious)), seconds))
    rows.append(row("landcover.yaml", data, "overall accuracy",
                    float((predicted == truth)[known].mean()), seconds))
    return rows


def unet_rows(scratch: Path) -> list[dict]:
    """Per-class IoU and Dice of the demo U-Net on its hold-out columns, and their means over
    the classes present there."""
    split = json.loads((REPO / "samples" / "landcover_unet.json").read_text())["split"]
    with rasterio.open(LANDCLASS) as src:
        truth, nodata = src.read(1), src.nodata
    truth[:, :split["train_columns"][1]] = nodata  # the training area: not scored
    path = write_like(scratch / "holdout_truth.tif", truth, LANDCLASS)
    result, seconds = run("landcover_unet.yaml", LANDSAT, scratch / "unet",
                          f"stats.ground_truth={path}")
    data = "NC Landsat 2000, hold-out east 35 % vs landclass96"
    scored = [m for m in result["metrics"] if m["tp"] + m["fn"] > 0]
    rows = class_rows("landcover_unet.yaml", data, result, seconds,
                      tuple(m["class_name"] for m in scored))
    rows += [row("landcover_unet.yaml", data, f"mean {kind}",
                 float(np.mean([m[kind.lower()] for m in scored])), seconds)
             for kind in ("IoU", "Dice")]
    return rows


def water_rows(scratch: Path) -> list[dict]:
    with rasterio.open(LANDCLASS) as src:
        truth, nodata = src.read(1), src.nodata
    water = np.where(truth == nodata, 255, truth == 6).astype(np.uint8)
    path = write_like(scratch / "water_truth.tif", water, LANDCLASS, nodata=255)
    result, seconds = run("water.yaml", LANDSAT, scratch / "water", f"stats.ground_truth={path}")
    rows = class_rows("water.yaml", "NC Landsat 2000 (raw DN) vs landclass96 water", result,
                      seconds, ("water",), ("precision", "recall", "IoU"))
    # README's settings for raw digital numbers (haze lifts green): NDWI > 0.3
    dn = ["model.params={water_index: ndwi, ndwi: 0.3, ndvi: 0.1, bare: 0.0}"]
    result, seconds = run("water.yaml", LANDSAT, scratch / "water_dn",
                          f"stats.ground_truth={path}", *dn)
    return rows + class_rows("water.yaml", "the same, README's raw-DN settings (NDWI > 0.3)",
                             result, seconds, ("water",), ("precision", "recall", "IoU"))


def sentinel2_rows(scratch: Path) -> list[dict]:
    """``sentinel2_water.yaml`` on the Sentinel-2-like STAC item made from the same scene
    (tests/data/stac/make_stac.py: 57 m NIR and SWIR1, synthetic clouds masked), scored on the
    cells its clouds leave against landclass96's water class cropped to the item's grid."""
    from tests.data.stac.make_stac import COLS, ROWS, make_scene

    item = make_scene(scratch / "s2")
    with rasterio.open(LANDCLASS) as src:
        truth, nodata = src.read(1, window=((0, ROWS), (0, COLS))), src.nodata
    water = np.where(truth == nodata, 255, truth == 6).astype(np.uint8)
    path = write_like(scratch / "s2_water_truth.tif", water, item.parent / "B04.tif",
                      nodata=255)
    result, seconds = run("sentinel2_water.yaml", item, scratch / "s2_water",
                          f"stats.ground_truth={path}")
    return class_rows("sentinel2_water.yaml", "the NC scene as a Sentinel-2-like STAC item "
                      "(raw DN, 57 m NIR/SWIR1, clouds masked) vs landclass96 water", result,
                      seconds, ("water",), ("precision", "recall", "IoU"))


def glacier_rows(scratch: Path) -> list[dict]:
    result, seconds = run("glacier.yaml", DATA / "everest_LE7_20001030_RGB.tif",
                          scratch / "glacier",
                          f"stats.ground_truth={DATA / 'everest_rgi60_glacier_mask.tif'}")
    return class_rows("glacier.yaml", "Landsat 7 Everest 2000 vs RGI 6.0 glacier mask", result,
                      seconds, ("snow_ice",), ("IoU", "precision", "recall"))


def slide_rows(scratch: Path) -> list[dict]:
    slide = DATA / "tcga-cr-7395-01a-01-ts1.svs"
    small = np.load(DATA / "tcga-cr-7395_tissue-mask_histolab-algorithmic_356x443.npy")
    with tifffile.TiffFile(slide) as tif:  # JPEG 2000 tiles: GDAL here has no codec for them
        height, width = tif.pages[0].shape[:2]
    rows = np.minimum(np.arange(height) // 10, small.shape[0] - 1)
    cols = np.minimum(np.arange(width) // 10, small.shape[1] - 1)
    path = scratch / "tissue_truth.tif"
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint8", tiled=True, compress="deflate") as dst:
        dst.write(small[np.ix_(rows, cols)].astype(np.uint8), 1)
    result, seconds = run("pathology.yaml", slide, scratch / "slide",
                          f"stats.ground_truth={path}")
    pairs = run_query(str(scratch / "slide"), "SELECT true_class, predicted_class, pixels "
                      "FROM confusion").to_pylist()
    count = {(p["true_class"], p["predicted_class"] > 0): p["pixels"] for p in pairs
             if p["true_class"] in (0, 1)}
    tp, fp, fn = (sum(v for (t, p), v in count.items() if (t, p) == key)
                  for key in ((1, True), (0, True), (1, False)))
    data = "TCGA-CR-7395 slide vs histolab's algorithmic tissue mask"
    return [row("pathology.yaml", data, metric, value, seconds) for metric, value in (
        ("tissue IoU", tp / (tp + fp + fn)), ("tissue Dice", 2 * tp / (2 * tp + fp + fn)),
        ("tissue precision", tp / (tp + fp)), ("tissue recall", tp / (tp + fn)))]


def nuclei_rows(scratch: Path) -> list[dict]:
    """``configs/nuclei.yaml``'s instance F1, precision and recall at IoU 0.5 from the flow's
    own ``instance_metrics``, on the synthetic 16-bit touching nuclei of tests/test_split.py
    (no real nuclei image with instance labels is reachable offline)."""
    from affine import Affine

    from tests.test_split import touching_ellipses

    image, truth = touching_ellipses()
    profile = {"driver": "GTiff", "width": truth.shape[1], "height": truth.shape[0],
               "transform": Affine.identity()}
    path, truth_path = scratch / "nuclei.tif", scratch / "nuclei_truth.tif"
    with rasterio.open(path, "w", count=1, dtype="uint16", **profile) as dst:
        dst.write(image)
    with rasterio.open(truth_path, "w", count=1, dtype="int32", **profile) as dst:
        dst.write(truth.astype(np.int32), 1)
    _, seconds = run("nuclei.yaml", path, scratch / "nuclei",
                     f"stats.ground_truth_instances={truth_path}", "tiling.chunk=128")
    found = run_query(str(scratch / "nuclei"), "SELECT * FROM instance_metrics").to_pylist()[0]
    data = f"{found['true']} synthetic touching 16-bit nuclei (tests/test_split.py)"
    return [row("nuclei.yaml", data, f"instance {name} at IoU 0.5", found[name], seconds)
            for name in ("f1", "precision", "recall")]


def mri_rows(scratch: Path) -> list[dict]:
    volume, truth, affine = template()
    brain = truth > 0
    # class ids 0 CSF, 1 GM, 2 WM; outside the brain no class id, so left out of the matrix
    truth_path = scratch / "mni_truth.nii.gz"
    write(truth_path, np.where(brain, truth - 1, 255), affine)
    rows = []
    for noise, bias in MRI_LEVELS:
        path = write(scratch / f"mni_{noise}_{bias}.nii.gz", degrade(volume, noise, bias),
                     affine)
        for corrected in (True, False):
            settings = [f"stats.ground_truth={truth_path}"]
            settings += [] if corrected else ["model.params.iterations=0"]
            result, seconds = run("mri.yaml", path, scratch / f"out_{noise}_{bias}_{corrected}",
                                  *settings)
            data = (f"MNI152 T1 1 mm, noise {noise:.0%}, bias ±{bias:.0%}"
                    f"{'' if corrected else ', no bias correction'}")
            rows += class_rows("mri.yaml", data, result, seconds,
                               ("csf", "grey_matter", "white_matter"), ("Dice",))
            mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
            lost = float(((mask == 255) & brain).sum() / brain.sum())
            rows.append(row("mri.yaml", data, "brain voxels outside the mask", lost, seconds))
            # left out of the flow's matrix (no truth class there): tissue the mask adds
            extra = float(((mask != 255) & ~brain).sum() / brain.sum())
            rows.append(row("mri.yaml", data, "non-brain voxels labelled tissue, share of the "
                                              "brain", extra, seconds))
    return rows


SECTIONS = {"kmeans": kmeans_rows, "unet": unet_rows, "water": water_rows,
            "sentinel2": sentinel2_rows, "glacier": glacier_rows, "slide": slide_rows,
            "nuclei": nuclei_rows, "mri": mri_rows}


def main() -> None:
    """``quality.py [section ...]``: every section by default; rows of sections run earlier
    stay in quality.json."""
    chosen = sys.argv[1:] or list(SECTIONS)
    with tempfile.TemporaryDirectory(prefix="segflow-quality-") as scratch:
        fresh = [r for name in chosen for r in SECTIONS[name](Path(scratch))]
    saved = REPO / "benchmarks" / "quality.json"  # tracked: README's scores are checked on it
    old = json.loads(saved.read_text()) if saved.exists() and sys.argv[1:] else []
    rerun = {r["config"] for r in fresh}
    rows = [r for r in old if r["config"] not in rerun] + fresh
    saved.write_text(json.dumps(rows, indent=1))
    print("\n| config | data | metric | score | seconds |\n|---|---|---|---|---|")
    for r in rows:
        share = "outside" in r["metric"] or "share" in r["metric"]
        score = f"{r['score']:.2%}" if share else f"{r['score']:.3f}"
        print(f"| {r['config']} | {r['data']} | {r['metric']} | {score} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
