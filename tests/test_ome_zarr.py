"""Every mask store is an OME-Zarr (NGFF 0.5) multiscale label image, checked by a published
reader (ome-zarr-models), with levels that are nearest-neighbour halvings of level 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from ome_zarr_models.v05 import ImageLabel

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config

CONFIGS = Path(__file__).parents[1] / "configs"


def _levels(group: zarr.Group) -> list[np.ndarray]:
    paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    return [group[p][:] for p in paths]


def test_raster_mask_is_a_valid_multiscale_label_image(textured_tif, tmp_path, dask_address):
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=512"])
    result = segment_image(str(textured_tif), str(tmp_path / "out"),
                           cfg.model_dump(mode="json"), dask_address)
    group = zarr.open_group(result["output_uri"], mode="r")
    model = ImageLabel.from_zarr(group)  # raises if the metadata is not valid NGFF 0.5
    multiscale = model.attributes.ome.multiscales[0]
    assert [a.unit for a in multiscale.axes] == ["meter", "meter"]

    levels = _levels(group)
    assert [lv.shape for lv in levels] == [(1500, 1300), (750, 650), (375, 325), (188, 163)]
    for finer, coarser in zip(levels, levels[1:]):
        np.testing.assert_array_equal(coarser, finer[::2, ::2])
    scales = [d.coordinateTransformations[0].scale for d in multiscale.datasets]
    assert scales == [[10.0, 10.0], [20.0, 20.0], [40.0, 40.0], [80.0, 80.0]]


def test_volume_mask_is_a_valid_multiscale_label_image(head_nii, tmp_path, dask_address):
    cfg = load_config(CONFIGS / "mri.yaml", ["tiling.chunk=64"])
    result = segment_image(str(head_nii), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    group = zarr.open_group(result["output_uri"], mode="r")
    multiscale = ImageLabel.from_zarr(group).attributes.ome.multiscales[0]
    assert [a.unit for a in multiscale.axes] == ["millimeter"] * 3
    assert multiscale.datasets[0].coordinateTransformations[0].scale == [1.0, 1.0, 1.0]
