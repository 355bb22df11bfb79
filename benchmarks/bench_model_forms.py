"""Model forms on this CPU: the demo U-Net as torch and as ONNX (onnxruntime), bare and through
segflow's runner, MONAI's sliding window on the same module, and the cost of test-time
augmentation (flips: 4 views, d4: 8 views) and of a two-model ensemble, in one run.

    .venv/bin/python benchmarks/bench_model_forms.py

The image is the bundled Landsat scene (489 x 443 px, 5 bands); every variant runs on the whole
scene with the same threads (torch's and onnxruntime's intra-op threads = the machine's cores)
and the same allocator (the process re-executes itself with the malloc settings segflow's Dask
workers run with, tasks/runtime/cluster.py), ``REPEATS`` times; the median is reported.
segflow's figures are its array-level ``predict`` on one tile holding the scene, so they time
the model form, not the Prefect/Dask run around it (BENCHMARKS.md §1-§2 time that). Writes
benchmarks/out/results/model_forms.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, RESULTS, machine  # noqa: E402

REPEATS = 5
THREADS = os.cpu_count() or 1
SAMPLE = REPO / "samples" / "nc_lsat7_2000_b12345.tif"
WEIGHTS = REPO / "samples" / "landcover_unet.pt"
NORMALIZE = ("model.normalize={mean: [78.386, 64.2676, 63.5604, 69.1132, 88.4055], "
             "std: [12.5374, 14.5693, 21.3879, 15.6462, 25.1653]}")


def median_seconds(call) -> float:
    call()  # warm: first-call allocations, onnxruntime's graph optimisation
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from segflow.tasks.runtime.cluster import WORKER_MALLOC

    malloc = {k.rsplit(".", 1)[-1]: v for k, v in WORKER_MALLOC.items()}
    if any(os.environ.get(k) != v for k, v in malloc.items()):  # glibc reads them at start
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **malloc})
    import onnxruntime as ort
    from monai.inferers import sliding_window_inference

    from segflow.tasks.config import load_config
    from segflow.tasks.models import InputSpec, build_model
    from segflow.tasks.models.nets import UNet
    from segflow.tasks.sources.registry import open_source

    torch.set_num_threads(THREADS)
    net = UNet(5, 8, dims=2, base=16, depth=3)
    net.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    net.eval()
    source = open_source(str(SAMPLE), load_config().input)
    box = tuple(slice(0, n) for n in source.spatial_shape)
    pixels, valid = source.read(box)
    cells = int(np.prod(source.spatial_shape))
    x = torch.from_numpy(np.where(valid, pixels, 0).astype(np.float32)[None])

    folder = Path(tempfile.mkdtemp(prefix="segflow-forms-"))
    onnx_path = folder / "unet.onnx"
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 5, 64, 64),), str(onnx_path), dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes})
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    h, w = x.shape[2:]
    padded = torch.nn.functional.pad(x, [0, -w % 8, 0, -h % 8])
    with torch.inference_mode():
        reference = net(padded)
    onnx_out = session.run(["logits"], {"image": padded.numpy()})[0]

    def segflow(*extra: str):
        cfg = load_config(overrides=["model.kind=unet", f"model.weights={WEIGHTS}",
                                     "model.params.num_classes=8", NORMALIZE,
                                     "tiling.tile=4096", "tiling.batch=1", *extra])
        model = build_model(cfg, InputSpec(5, source.dtype, 2), str(SAMPLE))
        return lambda: model.predict(pixels, valid, box)

    def segflow_onnx():
        cfg = load_config(overrides=["model.kind=onnx", f"model.weights={onnx_path}",
                                     "model.params.stride=8", NORMALIZE, "tiling.tile=4096",
                                     "tiling.batch=1"])
        model = build_model(cfg, InputSpec(5, source.dtype, 2), str(SAMPLE))
        return lambda: model.predict(pixels, valid, box)

    def bare_torch():
        with torch.inference_mode():
            net(padded).argmax(1)

    def monai_window():
        with torch.inference_mode():
            sliding_window_inference(x, roi_size=(256, 256), sw_batch_size=4, predictor=net,
                                     overlap=0.25, mode="gaussian").argmax(1)

    other = folder / "other.pt"
    torch.manual_seed(1)
    torch.save(UNet(5, 8, dims=2, base=16, depth=3).state_dict(), other)
    variants = {
        "bare torch (whole scene, one forward)": bare_torch,
        "bare onnxruntime (whole scene, one run)": lambda: np.argmax(session.run(
            ["logits"], {"image": padded.numpy()})[0], axis=1),
        "MONAI sliding_window_inference (256 px, 25 % overlap, gaussian)": monai_window,
        "segflow unet (torch)": segflow(),
        "segflow onnx": segflow_onnx(),
        "segflow unet, tta flips (4 views)": segflow("model.tta=flips"),
        "segflow unet, tta d4 (8 views)": segflow("model.tta=d4"),
        "segflow unet, ensemble of 2": segflow(
            f"model.ensemble=[{{kind: unet, weights: {other}, params: {{num_classes: 8}}}}]"),
    }
    figures = {}
    for name, call in variants.items():
        seconds = median_seconds(call)
        figures[name] = {"seconds": round(seconds, 4), "us_per_px": round(seconds / cells * 1e6, 3)}
        print(f"{name:64s} {seconds:7.3f} s  {seconds / cells * 1e6:6.2f} µs/px", flush=True)
    base = figures["segflow unet (torch)"]["seconds"]
    for name in ("segflow unet, tta flips (4 views)", "segflow unet, tta d4 (8 views)",
                 "segflow unet, ensemble of 2"):
        figures[name]["x_of_plain"] = round(figures[name]["seconds"] / base, 2)
    result = {"machine": machine(), "threads": THREADS, "repeats": REPEATS, "cells": cells,
              "onnx_vs_torch_max_abs_logit_diff": float(np.abs(onnx_out - reference.numpy()).max()),
              "figures": figures}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_forms.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "figures"}, indent=2))


if __name__ == "__main__":
    main()
