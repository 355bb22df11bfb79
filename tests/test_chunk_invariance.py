"""Global methods fit once per image, so the mask does not depend on the chunk size.

Through the flow once (Otsu: the fit's histogram on the cluster, the store, nodata and skipped
chunks), and on arrays for k-means (fitted on the session's cluster, predicted chunk by chunk
with ``segflow.testing.predict_chunked`` as a worker does); tests/test_methods_classical.py
does the same for the other classical kinds."""

from __future__ import annotations

import numpy as np
import rasterio
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.plan.grid import plan_chunks
from segflow.tasks.sources.registry import open_source
from segflow.testing import predict_chunked


def test_same_mask_for_chunk_512_and_2048_through_the_flow(textured_tif, tmp_path,
                                                            dask_address):
    masks = []
    for chunk in (512, 2048):
        cfg = load_config(overrides=["model.kind=otsu", f"tiling.chunk={chunk}", "tiling.halo=0",
                                     "output.pyramid=false"])
        result = segment_image(str(textured_tif), str(tmp_path / f"out{chunk}"),
                               cfg.model_dump(mode="json"), dask_address)
        assert result["chunks_total"] == (9 if chunk == 512 else 1)
        masks.append(zarr.open_array(result["output_uri"], path="0", mode="r")[:])
    np.testing.assert_array_equal(masks[0], masks[1])
    with rasterio.open(textured_tif) as src:
        valid = src.dataset_mask() > 0
    assert (masks[0][~valid] == 255).all()
    classes = np.unique(masks[0][masks[0] != 255])
    assert len(classes) == 2  # a non-trivial mask


def test_kmeans_same_mask_for_chunk_512_and_2048(textured_tif, client):
    source = open_source(str(textured_tif), load_config().input)
    spec = InputSpec(bands=len(source.bands), dtype=source.dtype)
    masks, fits = [], []
    for chunk in (512, 2048):
        cfg = load_config(overrides=["model.kind=kmeans", f"tiling.chunk={chunk}",
                                     "tiling.halo=0", "model.params.k=4",
                                     "model.params.max_samples=20000"])
        model = build_model(cfg, spec, source.uri)
        model.fit(source, client)
        assert len(plan_chunks(source.spatial_shape, chunk, 0).chunks) == (9 if chunk == 512
                                                                          else 1)
        masks.append(predict_chunked(model, source, chunk, 0))
        fits.append(model.identity())
    with rasterio.open(textured_tif) as src:
        valid = src.dataset_mask() > 0
    assert fits[0] == fits[1]
    np.testing.assert_array_equal(masks[0][valid], masks[1][valid])
    assert len(np.unique(masks[0][valid])) == 4  # a non-trivial mask
