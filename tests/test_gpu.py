"""The demo U-Net through the flow on CUDA with mixed precision (skipped on hosts without CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "samples" / "nc_lsat7_2000_b12345.tif"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")


def _run(tmp_path: Path, name: str, address: str, *settings: str) -> np.ndarray:
    cfg = load_config(ROOT / "configs" / "landcover_unet.yaml", ["tiling.chunk=128", *settings])
    result = segment_image(str(SAMPLE), str(tmp_path / name), cfg.model_dump(mode="json"),
                           address)
    return zarr.open_array(result["output_uri"], path="0", mode="r")[:]


def test_unet_runs_on_cuda_with_amp_and_agrees_with_cpu(tmp_path, dask_address, client):
    amp = _run(tmp_path, "cuda", dask_address, "model.amp=true")

    def devices() -> list[str]:
        from segflow.tasks.models import torch_model

        return [f"{key[1]}|{next(m.parameters()).device}"
                for key, m in torch_model._CACHE.items() if key[0].endswith("landcover_unet.pt")]

    loaded = [d for per_worker in client.run(devices).values() for d in per_worker]
    assert loaded and all(d.endswith("|cuda:0") for d in loaded)

    cpu = _run(tmp_path, "cpu", dask_address, "cluster.gpu=off")
    valid = cpu != 255
    assert (amp == 255).sum() == (~valid).sum()
    # float16 logits flip only cells whose two best classes are within float16 rounding
    assert (amp[valid] == cpu[valid]).mean() > 0.99
