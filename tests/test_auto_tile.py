"""``tiling.tile/batch: auto`` and the device data plane (the CUDA code run with device=cpu).

The auto tile must give the same mask as an explicit tile (crop stitching is exact for a model
whose reach fits in the halo), whether memory allows the whole chunk or forces small tiles.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from segflow.tasks.config import load_config
from segflow.tasks.models import InputSpec, build_model, sizing
from segflow.tasks.models.sizing import auto_sizes, bytes_per_cell
from segflow.tasks.models.torch_model import to_device

DATA = Path(__file__).parent / "data"


def _model(weights: Path, *sets: str):
    cfg = load_config(overrides=["model.kind=torchscript", f"model.weights={weights}",
                                 "model.params.receptive_field=7", "tiling.halo=8", *sets])
    return build_model(cfg, InputSpec(bands=3, dtype="uint8"), "rgb_byte.tif")


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(DATA / "rgb_byte.tif") as src:
        return src.read(), src.dataset_mask() > 0


def test_auto_tile_equals_explicit_tiles(dilated_model, scene, monkeypatch):
    pixels, valid = scene
    core = tuple(slice(8, n - 8) for n in valid.shape)
    explicit = _model(dilated_model, "tiling.tile=64", "tiling.batch=3")
    reference = explicit.predict(pixels, valid, core)
    auto = _model(dilated_model)
    assert (auto.tile, auto.batch) == (None, None)
    np.testing.assert_array_equal(auto.predict(pixels, valid, core), reference)
    # a worker with little memory: auto falls back to small tiles, batched; still exact
    monkeypatch.setattr("segflow.tasks.models.torch_model.memory_budget",
                        lambda device: 130 ** 2 * 4000.0)
    sides = tuple(s.stop - s.start for s in core)
    tile, batch = auto._sizes(auto._module("cpu"), torch.device("cpu"), sides)
    assert tile < max(sides) and batch >= 1  # several tiles per chunk now
    np.testing.assert_array_equal(auto.predict(pixels, valid, core), reference)


def test_auto_sizes_whole_core_when_it_fits_else_the_largest_window_that_does():
    cell = 1000.0
    assert auto_sizes((2048, 1500), 16, 1, cell, 1e12, None, None) == (2048, 1)
    budget = 600 ** 2 * cell
    tile, batch = auto_sizes((2048, 2048), 16, 8, cell, budget, None, None)
    assert tile % 8 == 0 and (tile + 32) ** 2 * cell <= budget < (tile + 8 + 32) ** 2 * cell
    assert batch == 1
    # explicit values are kept; the batch fills the budget with windows, at most the tiles held
    assert auto_sizes((512, 512), 0, 1, cell, 3 * 128 ** 2 * cell, 128, None) == (128, 3)
    assert auto_sizes((256, 256), 0, 1, cell, 1e12, 128, None) == (128, 4)
    assert auto_sizes((24, 24, 24), 4, 1, cell, 1e12, None, None) == (24, 1)


def test_cpu_bytes_per_cell_bounds_the_activations_from_above():
    """The probe's figure covers every activation of a plain conv stack, counted by hand."""
    widths = [16, 32, 8]
    layers, cin = [], 3
    for w in widths:
        layers += [torch.nn.Conv2d(cin, w, 3, padding=1), torch.nn.ReLU()]
        cin = w
    module = torch.nn.Sequential(*layers).eval()
    measured = bytes_per_cell("test-stack", module, 3, 2, 1, torch.device("cpu"))
    by_hand = 4 * (3 + 2 * sum(widths))  # input, and each conv's and ReLU's float32 output
    assert math.isclose(measured, by_hand, rel_tol=0.01), (measured, by_hand)
    assert sizing.memory_budget(torch.device("cpu")) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this host)")
def test_cuda_path_equals_cpu_path(dilated_model, scene):
    pixels, valid = scene
    core = tuple(slice(0, n) for n in valid.shape)
    on_gpu = _model(dilated_model).predict(pixels, valid, core)
    cpu = _model(dilated_model, "cluster.gpu=off").predict(pixels, valid, core)
    np.testing.assert_array_equal(on_gpu, cpu)
    array = np.arange(600, dtype=np.int16).reshape(6, 100)
    np.testing.assert_array_equal(to_device(array, torch.device("cuda")).cpu().numpy(), array)
