"""Every mask store is an OME-Zarr (NGFF 0.5) multiscale label image, checked by a published
reader (ome-zarr-models), with levels that are nearest-neighbour halvings of level 0."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import zarr
from nibabel.affines import apply_affine
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
    # a smaller fit sample than the config's: the store's metadata does not depend on it
    cfg = load_config(CONFIGS / "mri.yaml", ["tiling.chunk=64", "model.params.fit_voxels=200000"])
    result = segment_image(str(head_nii), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    group = zarr.open_group(result["output_uri"], mode="r")
    multiscale = ImageLabel.from_zarr(group).attributes.ome.multiscales[0]
    assert [a.unit for a in multiscale.axes] == ["millimeter"] * 3
    assert multiscale.datasets[0].coordinateTransformations[0].scale == [1.0, 1.0, 1.0]


def test_a_volume_lies_in_world_coordinates_where_nibabel_puts_its_voxels(head_nii, tmp_path,
                                                                           dask_address):
    """The scan is LAS (x runs right to left); NGFF 0.5 has no flips, so the store runs x the
    other way and says so with a positive scale. Read as napari does (ome-zarr's Reader: axes,
    scale, translation), the mask's cells land on nibabel's RAS+ mm of the file's voxels."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    source = nib.load(head_nii)
    assert nib.aff2axcodes(source.affine) == ("L", "A", "S")
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=64"])
    result = segment_image(str(head_nii), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    (node,) = [n for n in Reader(parse_url(result["output_uri"]))() if "color" in n.metadata]
    axes = [a["name"] for a in node.metadata["axes"]]
    scale, shift = (np.array(t["scale" if t["type"] == "scale" else "translation"])
                    for t in node.metadata["coordinateTransformations"][0])
    assert axes == ["x", "y", "z"] and (scale > 0).all()
    mask = np.asarray(node.data[0])
    assert mask.shape == source.shape

    def world(cell: np.ndarray) -> np.ndarray:  # OME: scale then translation, per named axis
        xyz = scale * cell + shift
        return xyz[[axes.index(a) for a in "xyz"]]

    # the box's eight corners are the file's eight corners in RAS+ mm
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in source.shape])).reshape(3, -1).T
    ome = sorted(tuple(world(c)) for c in corners)
    assert ome == sorted(tuple(apply_affine(source.affine, c)) for c in corners)
    # and each cell holds the file's voxel at that point: Otsu's two classes split the
    # voxel values of the file cleanly only if every cell found is the right voxel
    values = np.asarray(source.dataobj)
    cells = np.rint((apply_affine(source.affine, np.indices(source.shape).reshape(3, -1).T)
                     [:, [("x", "y", "z").index(a) for a in axes]] - shift) / scale).astype(int)
    found = mask[tuple(cells.T)].reshape(source.shape)
    assert values[found == 0].max() < values[found == 1].min()


def test_napari_s_reader_finds_the_class_and_instance_layers_with_names(textured_tif, tmp_path,
                                                                        dask_address):
    """What napari-ome-zarr is handed: ome-zarr's own Reader walks the store."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=512", "stats.instances=true"])
    result = segment_image(str(textured_tif), str(tmp_path / "out"),
                           cfg.model_dump(mode="json"), dask_address)
    group = zarr.open_group(result["output_uri"], mode="r")
    ImageLabel.from_zarr(group["labels/instances"])  # valid NGFF 0.5 on its own

    nodes = list(Reader(parse_url(result["output_uri"]))())
    layers = {n.metadata["name"]: n for n in nodes if "color" in n.metadata}
    store_name = result["image_id"]  # the store, less .zarr
    assert set(layers) == {store_name, "instances"}
    classes = layers[store_name]
    assert classes.metadata["properties"] == {0: {"class": "background"},
                                              1: {"class": "foreground"}}
    colours = {c["id"]: c["colour"] for c in group.attrs["segflow"]["classes"]}
    for value, rgba in classes.metadata["color"].items():
        assert "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3]) == colours[value]
    # both pyramids, level for level, in metres; the instance ids equal the array written
    for node in layers.values():
        assert [d.shape for d in node.data] == [(1500, 1300), (750, 650), (375, 325),
                                                (188, 163)]
        scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
        assert scales == [[10.0, 10.0], [20.0, 20.0], [40.0, 40.0], [80.0, 80.0]]
    ids = np.asarray(layers["instances"].data[0])
    assert ids.max() == result["instances"]
    np.testing.assert_array_equal(np.asarray(layers["instances"].data[1]), ids[::2, ::2])
