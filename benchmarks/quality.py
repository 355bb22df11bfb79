"""Quality of the shipped configs against real ground truth, one table: config, data, metric,
score, seconds.

So far: ``configs/landcover_unet.yaml`` (the demo U-Net) against the GRASS ``landclass96`` map
on the eastern 35 % of the Landsat scene it never saw in training (the western columns are
nodata in the truth written here), scored by the flow's own metrics (``stats.ground_truth``:
the streamed confusion matrix); and ``configs/mri.yaml`` on the MNI ICBM152 2009a template
(nilearn's wheel: T1 and its GM/WM probability maps; truth = each brain voxel's most probable
tissue, CSF = 1 - GM - WM), degraded here with a smooth multiplicative bias field and Rician
noise at several levels, with the bias correction on and off (``model.params.iterations=0``).
Dice per tissue and the share of brain voxels the brain mask leaves out are computed in NumPy
from the written mask.

    .venv/bin/pip install -e '.[test,bench]'
    .venv/bin/python benchmarks/quality.py            # the table, as Markdown
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, RESULTS  # noqa: E402
from segflow.flows.segment import segment_image  # noqa: E402
from segflow.tasks.config import load_config  # noqa: E402
from tests.mni import degrade, dice, template, write  # noqa: E402

#: (Rician noise as a share of the maximum, bias field amplitude)
MRI_LEVELS = ((0.0, 0.0), (0.03, 0.2), (0.03, 0.4), (0.05, 0.2))


def mri_rows(scratch: Path) -> list[dict]:
    volume, truth, affine = template()
    brain = truth > 0
    rows = []
    for noise, bias in MRI_LEVELS:
        path = write(scratch / f"mni_{noise}_{bias}.nii.gz", degrade(volume, noise, bias),
                     affine)
        for corrected in (True, False):
            extra = [] if corrected else ["model.params.iterations=0"]
            cfg = load_config(REPO / "configs" / "mri.yaml", extra)
            clock = time.perf_counter()
            result = segment_image(str(path), str(scratch / f"out_{noise}_{bias}_{corrected}"),
                                   cfg.model_dump(mode="json"))
            seconds = time.perf_counter() - clock
            mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
            labels = np.where(mask == 255, 0, mask.astype(np.int64) + 1)
            data = (f"MNI152 T1 1 mm, noise {noise:.0%}, bias ±{bias:.0%}"
                    f"{'' if corrected else ', no bias correction'}")
            scores = {f"Dice {name}": dice(labels, truth, k)
                      for k, name in ((1, "CSF"), (2, "GM"), (3, "WM"))}
            scores["brain voxels outside the mask"] = float((~(labels > 0) & brain).sum()
                                                            / brain.sum())
            rows += [{"config": "mri.yaml", "data": data, "metric": metric, "score": score,
                      "seconds": seconds} for metric, score in scores.items()]
            print(f"{data}: " + ", ".join(f"{m} {s:.3f}" for m, s in scores.items()),
                  f"({seconds:.0f} s)", flush=True)
    return rows


def unet_rows(scratch: Path) -> list[dict]:
    """Per-class IoU and Dice of the demo U-Net on its hold-out columns, and their means over
    the classes present there."""
    split = json.loads((REPO / "samples" / "landcover_unet.json").read_text())["split"]
    with rasterio.open(REPO / "samples" / "nc_landclass96.tif") as src:
        truth, profile = src.read(1), src.profile
    truth[:, :split["train_columns"][1]] = profile["nodata"]  # the training area: not scored
    path = scratch / "holdout_truth.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(truth, 1)
    cfg = load_config(REPO / "configs" / "landcover_unet.yaml", [f"stats.ground_truth={path}"])
    clock = time.perf_counter()
    result = segment_image(str(REPO / "samples" / "nc_lsat7_2000_b12345.tif"),
                           str(scratch / "unet"), cfg.model_dump(mode="json"))
    seconds = time.perf_counter() - clock
    data = "NC Landsat 2000, hold-out east 35 % vs landclass96"
    scored = [m for m in result["metrics"] if m["tp"] + m["fn"] > 0]
    rows = [{"config": "landcover_unet.yaml", "data": data, "metric": f"{kind} {m['class_name']}",
             "score": m[kind.lower()], "seconds": seconds}
            for m in scored for kind in ("IoU", "Dice")]
    for kind in ("IoU", "Dice"):
        rows.append({"config": "landcover_unet.yaml", "data": data, "metric": f"mean {kind}",
                     "score": float(np.mean([m[kind.lower()] for m in scored])),
                     "seconds": seconds})
    print(", ".join(f"{r['metric']} {r['score']:.2f}" for r in rows), flush=True)
    return rows


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
    cfg = load_config(REPO / "configs" / "nuclei.yaml",
                      [f"stats.ground_truth_instances={truth_path}", "tiling.chunk=128"])
    clock = time.perf_counter()
    segment_image(str(path), str(scratch / "nuclei"), cfg.model_dump(mode="json"))
    seconds = time.perf_counter() - clock
    from segflow.tasks.catalog.query import run_query

    row = run_query(str(scratch / "nuclei"), "SELECT * FROM instance_metrics").to_pylist()[0]
    data = f"{row['true']} synthetic touching 16-bit nuclei (tests/test_split.py)"
    return [{"config": "nuclei.yaml", "data": data, "metric": f"instance {name} at IoU 0.5",
             "score": row[name], "seconds": seconds} for name in ("f1", "precision", "recall")]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="segflow-quality-") as scratch:
        rows = (unet_rows(Path(scratch)) + nuclei_rows(Path(scratch))
                + mri_rows(Path(scratch)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(rows, indent=1))
    print("\n| config | data | metric | score | seconds |\n|---|---|---|---|---|")
    for r in rows:
        score = f"{r['score']:.2%}" if "outside" in r["metric"] else f"{r['score']:.3f}"
        print(f"| {r['config']} | {r['data']} | {r['metric']} | {score} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
