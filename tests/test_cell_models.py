"""Cellpose and InstanSeg through the flow behind the ownership merge, in chunks smaller than
the cells' spacing (StarDist: tests/test_stardist.py, in its own TensorFlow environment).

With a deterministic network (Cellpose reading its flows from the image, InstanSeg seeding at
peaks: tests/cell_forms.py) everything after the network is the package's own, and the cells
found in 48-px chunks are, as in one chunk, the known disks numbered as
``skimage.measure.label`` numbers them (Cellpose), or the one-chunk diamonds (InstanSeg, in
64-px chunks): no cell cut at a chunk face, none counted twice. The instance contract
(tests/conformance/test_instance_models.py) runs the small random Cellpose-SAM and the
InstanSeg file on a real scene.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.errors import UserError
from segflow.tasks.models import InputSpec, build_model
from tests import cell_forms

pytestmark = pytest.mark.skipif(not (find_spec("cellpose") and find_spec("instanseg")),
                                reason="the cellpose and instanseg extras are not installed")

RADIUS, SPACING = 6, 20  # disks 13 px across, a chunk face through many of them


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> tuple[Path, np.ndarray, Path]:
    folder = tmp_path_factory.mktemp("cells")
    truth, image = cell_forms.disk_cells((150, 190), RADIUS, SPACING, seed=3)
    path = folder / "disks.tif"
    tifffile.imwrite(path, image, photometric="minisblack", planarconfig="separate")
    return path, truth, folder


def _ids(image: Path, out: Path, address: str, chunk: int, *overrides: str) -> np.ndarray:
    cfg = load_config(overrides=[*overrides, f"tiling.chunk={chunk}", "stats.max_object=16",
                                 "output.pyramid=false"])
    result = segment_image(str(image), str(out), cfg.model_dump(mode="json"), address)
    assert result["status"] == "succeeded", result
    return zarr.open_array(result["output_uri"], path="labels/instances/0", mode="r")[:]


def test_cellpose_cells_are_whole_across_chunks(cells, client, dask_address, tmp_path):
    image, truth, folder = cells
    weights = cell_forms.cellpose_file(folder / "cpsam_tiny")
    config = ("model.kind=cellpose", f"model.weights={weights}", cell_forms.CELLPOSE_PARAMS,
              "model.params.percentiles=[0, 100]", "model.params.context=8",
              "tiling.tile=128")
    client.run(cell_forms.local_flows, True)
    try:
        found = {chunk: _ids(image, tmp_path / f"c{chunk}", dask_address, chunk, *config)
                 for chunk in (48, 4096)}
    finally:
        client.run(cell_forms.local_flows, False)
    assert truth.max() > 30
    for chunk, ids in found.items():
        np.testing.assert_array_equal(ids, truth, err_msg=f"chunk {chunk}")


def test_instanseg_cells_are_whole_across_chunks(cells, dask_address, tmp_path):
    image, truth, folder = cells
    weights = cell_forms.instanseg_file(folder / "instanseg.pt")
    config = ("model.kind=instanseg", f"model.weights={weights}",
              "model.params.percentiles=[0, 100]", "model.params.context=34",
              "tiling.tile=128")
    whole = _ids(image, tmp_path / "whole", dask_address, 4096, *config)
    assert whole.max() == truth.max()  # one object per disk (a diamond around its peak)
    # its halo (seed window 32 + the largest object 16) is 64 px on its 16-px grid
    np.testing.assert_array_equal(_ids(image, tmp_path / "c64", dask_address, 64, *config),
                                  whole)


@pytest.mark.parametrize(("kind", "weights", "text"), [
    ("cellpose", "missing.pt", "model weights file not found"),
    ("cellpose", "instanseg.pt", "not a state_dict"),
    ("cellpose", "sam.pt", "not a Cellpose 4 model"),
    ("instanseg", "cpsam_tiny", "not an InstanSeg TorchScript file"),
    ("stardist", "cpsam_tiny", "not a folder"),
])
def test_wrong_weights_are_one_line_errors(cells, kind, weights, text):
    image, _, folder = cells
    if not (folder / "cpsam_tiny").exists():
        cell_forms.cellpose_file(folder / "cpsam_tiny")
    if not (folder / "instanseg.pt").exists():
        cell_forms.instanseg_file(folder / "instanseg.pt")
    torch.save({"conv.weight": torch.zeros(1)}, folder / "sam.pt")  # another model's weights
    cfg = load_config(overrides=[f"model.kind={kind}", f"model.weights={folder / weights}"])
    with pytest.raises(UserError) as error:
        build_model(cfg, InputSpec(bands=3, dtype="float32"), str(image))
    assert text in str(error.value) and "\n" not in str(error.value)


def test_an_instanseg_files_pixel_size_is_its_card(tmp_path):
    """The size InstanSeg trained at travels in its file; slides are read at the matching
    level (tasks/plan/card.py), other rasters of another size refused."""
    weights = cell_forms.instanseg_file(tmp_path / "half_um.pt", pixel_size=0.5)
    cfg = load_config(overrides=["model.kind=instanseg", f"model.weights={weights}"])
    model = build_model(cfg, InputSpec(bands=3, dtype="uint8"), "slide.svs")
    assert model.card is not None
    assert (model.card.pixel_size, model.card.unit, model.card.on_mismatch) == \
        (0.5, "um", "resample")
