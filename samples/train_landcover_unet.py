"""Train the demo checkpoint: the project's 2-D U-Net on the bundled Landsat / land-cover pair.

Input samples/nc_lsat7_2000_b12345.tif (Landsat 7 bands 1-5, float32, nodata -99999), labels
samples/nc_landclass96.tif (1 developed ... 7 sediment). Spatial hold-out: the western 65 % of
columns train, the eastern 35 % are only scored. Cells without a label or without pixels are
ignored (class 0 'unlabelled' is never a target). Reproducible on CPU: fixed seeds,
deterministic algorithms, a fixed thread count. Writes samples/landcover_unet.pt (a state_dict,
loaded with weights_only=True) and samples/landcover_unet.json (normalisation, hold-out IoU and
Dice per class, how it was made).

    .venv/bin/python samples/train_landcover_unet.py [--epochs 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from segflow.tasks.models.nets import UNet  # noqa: E402  (run as a script from any folder)

CLASSES = ["unlabelled", "developed", "agriculture", "herbaceous", "shrubland", "forest",
           "water", "sediment"]
NODATA = -99999.0
SPLIT = 0.65  # fraction of columns (west) used for training
BASE, DEPTH, SEED, CROP, BATCH, STEPS_PER_EPOCH = 16, 3, 0, 96, 8, 8


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (5, h, w) float32, their valid mask, labels (h, w) int64 with -1 = ignore."""
    with rasterio.open(HERE / "nc_lsat7_2000_b12345.tif") as src:
        pixels = src.read().astype(np.float32)
    with rasterio.open(HERE / "nc_landclass96.tif") as src:
        raw = src.read(1)
    valid = (pixels != NODATA).all(axis=0)
    labels = np.where((raw != NODATA) & (raw >= 1) & valid, raw, -1).astype(np.int64)
    return pixels, valid, labels


def normalised(pixels: np.ndarray, valid: np.ndarray, mean: np.ndarray,
               std: np.ndarray) -> np.ndarray:
    """What segflow feeds the model: (x - mean) / std, nodata cells zeroed."""
    x = (pixels - mean[:, None, None]) / std[:, None, None]
    x[:, ~valid] = 0.0
    return x.astype(np.float32)


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float | int]]:
    """IoU and Dice per class over cells with a label (truth >= 1)."""
    out: dict[str, dict[str, float | int]] = {}
    pred, truth = pred[truth >= 1], truth[truth >= 1]
    for c in range(1, len(CLASSES)):
        tp = int(((pred == c) & (truth == c)).sum())
        fp = int(((pred == c) & (truth != c)).sum())
        fn = int(((pred != c) & (truth == c)).sum())
        if tp + fn == 0:
            continue  # class absent from the hold-out: no score
        out[CLASSES[c]] = {"iou": tp / (tp + fp + fn), "dice": 2 * tp / (2 * tp + fp + fn),
                           "pixels": tp + fn}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--out", type=Path, default=HERE / "landcover_unet.pt")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)

    pixels, valid, labels = load()
    split = int(round(pixels.shape[2] * SPLIT))
    train_valid = valid[:, :split]
    mean = np.array([pixels[b, :, :split][train_valid].mean() for b in range(5)], np.float32)
    std = np.array([pixels[b, :, :split][train_valid].std() for b in range(5)], np.float32)
    x = torch.from_numpy(normalised(pixels, valid, mean, std))
    y = torch.from_numpy(labels)
    train_y = labels[:, :split]
    counts = np.bincount(train_y[train_y >= 1], minlength=len(CLASSES)).astype(np.float64)
    # inverse-sqrt frequency weights so rare classes (sediment, agriculture) are not ignored
    weights = np.where(counts > 0, 1 / np.sqrt(np.maximum(counts, 1)), 0.0)
    weights = torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)

    net = UNet(5, len(CLASSES), dims=2, base=BASE, depth=DEPTH)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3,
                                                total_steps=args.epochs * STEPS_PER_EPOCH)
    h = pixels.shape[1]
    clock = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        for _ in range(STEPS_PER_EPOCH):
            rows = rng.integers(0, h - CROP, BATCH)
            cols = rng.integers(0, split - CROP, BATCH)
            flips = rng.integers(0, 2, (BATCH, 2))
            xb, yb = [], []
            for r, c, (fv, fh) in zip(rows, cols, flips):
                dims = [d for d, f in ((1, fv), (2, fh)) if f]
                xb.append(torch.flip(x[:, r:r + CROP, c:c + CROP], dims))
                yb.append(torch.flip(y[r:r + CROP, c:c + CROP], [d - 1 for d in dims]))
            loss = F.cross_entropy(net(torch.stack(xb)), torch.stack(yb), weight=weights,
                                   ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} "
              f"({time.perf_counter() - clock:.0f} s)", flush=True)

    net.eval()
    torch.save(net.state_dict(), args.out)
    with torch.inference_mode():
        pred = net(x[None]).argmax(1)[0].numpy()
    held = scores(pred[:, split:], labels[:, split:])
    report = {
        "command": "python samples/train_landcover_unet.py --epochs "
                   f"{args.epochs}",
        "architecture": {"kind": "unet", "dims": 2, "base": BASE, "depth": DEPTH,
                         "in_channels": 5, "classes": CLASSES},
        "seed": SEED, "epochs": args.epochs, "steps_per_epoch": STEPS_PER_EPOCH,
        "batch": BATCH, "crop": CROP, "train_seconds": round(time.perf_counter() - clock, 1),
        "split": {"train_columns": [0, split], "holdout_columns": [split, pixels.shape[2]]},
        "normalize": {"mean": [round(float(v), 4) for v in mean],
                      "std": [round(float(v), 4) for v in std]},
        "holdout": {
            "per_class": {k: {m: round(v, 4) if isinstance(v, float) else v
                              for m, v in s.items()} for k, s in held.items()},
            "mean_iou": round(float(np.mean([s["iou"] for s in held.values()])), 4),
            "mean_dice": round(float(np.mean([s["dice"] for s in held.values()])), 4),
            "pixel_accuracy": round(float((pred[:, split:] == labels[:, split:])[
                labels[:, split:] >= 1].mean()), 4),
        },
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["holdout"], indent=2))


if __name__ == "__main__":
    main()
