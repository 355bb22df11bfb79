"""Crop stitching is exact: a stride-1 model tiled with halo >= receptive field equals one
whole-image forward pass, at chunk and tile seams and at the image borders."""

from __future__ import annotations

import numpy as np
import rasterio
import torch
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.models.tiling import predict_tiled


def _whole_image(model_path, pixels: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(model_path)).eval()
    with torch.inference_mode():
        return module(torch.from_numpy(pixels[None])).argmax(1)[0].numpy().astype(np.uint8)


def test_predict_tiled_equals_whole_block(dilated_model):
    rng = np.random.default_rng(0)
    block = rng.random((3, 301, 257), dtype=np.float32)
    module = torch.jit.load(str(dilated_model)).eval()

    def forward(batch):
        return module(batch).argmax(1).to(torch.uint8)

    whole = (slice(0, 301), slice(0, 257))
    with torch.inference_mode():
        tiled = predict_tiled(forward, torch.from_numpy(block), whole, tile=64, halo=8,
                              batch=3).numpy()
    np.testing.assert_array_equal(tiled, _whole_image(dilated_model, block))


def _tiled_and_whole(rgb_tif, model, root, scheduler, halo):
    """segflow's mask (chunk 300, tile 96: they divide neither side of the 718x791 scene) and
    one whole-image forward pass over the same input, with the valid-pixel mask."""
    cfg = load_config(overrides=[
        "model.kind=torchscript", f"model.weights={model}", "model.params.receptive_field=7",
        "tiling.chunk=300", "tiling.tile=96", f"tiling.halo={halo}", "tiling.batch=4",
        "tiling.skip_empty=false"])
    result = segment_image(str(rgb_tif), str(root), cfg.model_dump(mode="json"), scheduler)
    assert result["chunks_total"] == 9
    tiled = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
    with rasterio.open(rgb_tif) as src:
        pixels = src.read().astype(np.float32) / 255.0
        valid = src.dataset_mask() > 0
    pixels[:, ~valid] = 0.0  # segflow feeds nodata as 0
    return tiled, _whole_image(model, pixels), valid


def test_segflow_tiled_equals_whole_image_pass(rgb_tif, dilated_model, tmp_path, dask_address):
    # halo 8 >= receptive field 7
    tiled, whole, valid = _tiled_and_whole(rgb_tif, dilated_model, tmp_path / "out",
                                           dask_address, halo=8)
    np.testing.assert_array_equal(tiled[valid], whole[valid])
    assert (tiled[~valid] == 255).all()


def test_too_small_halo_is_not_exact(rgb_tif, dilated_model, tmp_path, dask_address):
    """The equality above is not vacuous: with a halo below the receptive field seams differ."""
    tiled, whole, valid = _tiled_and_whole(rgb_tif, dilated_model, tmp_path / "out",
                                           dask_address, halo=2)
    assert (tiled[valid] != whole[valid]).sum() > 0


def test_model_is_loaded_once_per_worker(rgb_tif, dilated_model, tmp_path, dask_address):
    from distributed import Client

    cfg = load_config(overrides=["model.kind=torchscript", f"model.weights={dilated_model}",
                                 "tiling.chunk=128", "tiling.halo=8"])
    result = segment_image(str(rgb_tif), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    assert result["chunks_total"] - result["chunks_skipped"] > 10

    target = str(dilated_model)

    def loaded():
        from segflow.tasks.models import torch_model

        return [path for path, _ in torch_model._CACHE if path == target]

    with Client(dask_address, set_as_default=False) as client:
        per_worker = client.run(loaded)
    assert all(paths == [target] for paths in per_worker.values())
