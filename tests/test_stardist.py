"""StarDist through the flow behind the ownership merge, in its own environment
(`make test-stardist`: TensorFlow beside this project's test environment).

A small StarDist 2-D model is trained here for a few steps on disk cells and saved by StarDist
in its folder form. Its network is a convolution stack and its NMS keeps objects where they
are, so on its pixel grid (chunk origins aligned to ``grid`` × 2 per U-Net level) the nuclei
found in 48-px chunks equal those of one chunk, ids included: one per known disk.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest
import tifffile
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.errors import UserError
from segflow.tasks.models import InputSpec, build_model
from tests import cell_forms

pytestmark = pytest.mark.skipif(not find_spec("stardist"),
                                reason="StarDist has its own environment: make test-stardist")


@pytest.fixture(scope="module")
def model_and_image(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stardist")
    truth, image = cell_forms.disk_cells((150, 190), 6, 20, seed=3)
    path = folder / "disks.tif"
    tifffile.imwrite(path, image[:1])
    return cell_forms.stardist_folder(folder / "tiny"), path, truth


def _ids(model, image, out, address, chunk):
    cfg = load_config(overrides=["model.kind=stardist", f"model.weights={model}",
                                 "model.params.channels=[1]", "model.params.percentiles=[0, 100]",
                                 "model.params.context=16", "stats.max_object=16",
                                 "tiling.tile=128", f"tiling.chunk={chunk}",
                                 "output.pyramid=false"])
    result = segment_image(str(image), str(out), cfg.model_dump(mode="json"), address)
    assert result["status"] == "succeeded", result
    return zarr.open_array(result["output_uri"], path="labels/instances/0", mode="r")[:]


def test_stardist_nuclei_are_whole_across_chunks(model_and_image, dask_address, tmp_path):
    model, image, truth = model_and_image
    whole = _ids(model, image, tmp_path / "whole", dask_address, 4096)
    tiled = _ids(model, image, tmp_path / "c48", dask_address, 48)
    np.testing.assert_array_equal(tiled, whole)
    assert whole.max() == truth.max()  # every disk found, once


def test_a_folder_without_weights_or_of_3d_is_one_line(model_and_image, tmp_path):
    model, image, _ = model_and_image
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((model / "config.json").read_text())
    for folder, text in ((empty, "holds no weights_best.h5"), (tmp_path, "holds no config.json")):
        cfg = load_config(overrides=["model.kind=stardist", f"model.weights={folder}"])
        with pytest.raises(UserError) as error:
            build_model(cfg, InputSpec(bands=1, dtype="float32"), str(image))
        assert text in str(error.value) and "\n" not in str(error.value)
