"""Global methods fit once per image, so the mask does not depend on the chunk size."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config


@pytest.mark.parametrize("kind", ["otsu", "kmeans"])
def test_same_mask_for_chunk_512_and_2048(kind, textured_tif, tmp_path, dask_address):
    masks = []
    for chunk in (512, 2048):
        cfg = load_config(overrides=[f"model.kind={kind}", f"tiling.chunk={chunk}",
                                     "tiling.halo=0", "model.params.k=4"] if kind == "kmeans"
                          else [f"model.kind={kind}", f"tiling.chunk={chunk}", "tiling.halo=0"])
        result = segment_image(str(textured_tif), str(tmp_path / f"out{chunk}"),
                               cfg.model_dump(mode="json"), dask_address)
        assert result["chunks_total"] == (9 if chunk == 512 else 1)
        masks.append(zarr.open_array(result["output_uri"], path="0", mode="r")[:])
    np.testing.assert_array_equal(masks[0], masks[1])
    classes = np.unique(masks[0][masks[0] != 255])
    assert len(classes) == (4 if kind == "kmeans" else 2)  # non-trivial masks
