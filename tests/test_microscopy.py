"""Multi-channel fluorescence through bioio: channels by name reach the model in the order
named, one scene by name or index, a Z plane or the Z maximum, each checked against tifffile's
reading of the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from skimage.filters import threshold_otsu

from segflow.flows.segment import segment_image
from segflow.tasks.config import InputConfig, load_config
from segflow.tasks.errors import UserError
from segflow.tasks.mask.store import open_store_group
from segflow.tasks.sources.registry import open_source
from tests.data.microscopy.make_ome import read, scenes, z_stack

DATA = Path(__file__).parent / "data"
CELLS = DATA / "vectra_crop.ome.tif"  # real DAPI, FITC, Cy3
WHOLE = (slice(0, 256), slice(0, 384))


def test_channels_named_reach_the_model_in_that_order(tmp_path, dask_address):
    """Otsu on the first band: naming FITC first thresholds FITC, naming DAPI first DAPI."""
    pixels, names, _ = read(CELLS)
    assert names == ["DAPI", "FITC", "Cy3"]
    masks = {}
    for order in (["DAPI", "FITC"], ["FITC", "DAPI"]):
        cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=128",
                                     f"input.channels=[{', '.join(order)}]"])
        run = segment_image(str(CELLS), str(tmp_path / order[0]), cfg.model_dump(mode="json"),
                            dask_address)
        _, meta = open_store_group(run["output_uri"])
        assert meta["channels"] == order  # the names travel with the mask
        masks[order[0]] = zarr.open_array(run["output_uri"], path="0", mode="r")[:]
    for name in ("DAPI", "FITC"):  # the threshold of the channel named first, by skimage
        channel = pixels[names.index(name)]
        np.testing.assert_array_equal(masks[name], channel > threshold_otsu(channel))
    assert (masks["DAPI"] != masks["FITC"]).mean() > 0.05


def test_an_unknown_channel_or_a_microscopy_key_elsewhere_is_one_line():
    with pytest.raises(UserError) as error:
        open_source(str(CELLS), InputConfig(channels=["DAPI", "CD3"]))
    assert str(error.value) == f"{CELLS}: no channel CD3: the file has DAPI, FITC, Cy3"
    with pytest.raises(UserError) as error:
        open_source(str(DATA / "rgb_byte.tif"), InputConfig(channels=["DAPI"]))
    assert "input.channels apply to microscopy files; this is read by the geotiff" in \
        str(error.value)


def test_a_scene_by_name_or_index(tmp_path):
    two = scenes(CELLS, tmp_path / "two.ome.tif")
    with tifffile.TiffFile(two) as tif:
        second = tif.series[1].asarray()
    for scene in ("stroma", 1):
        source = open_source(str(two), InputConfig(scene=scene, channels=["Cy3"]))
        assert source.spatial_shape == (384, 256)
        np.testing.assert_array_equal(source.read((slice(0, 384), slice(0, 256)))[0],
                                      second[[2]])
    with pytest.raises(UserError) as error:
        open_source(str(two), InputConfig(scene="tumour"))
    assert "no scene 'tumour': the file has tumor_core, stroma" in str(error.value)


def test_z_is_a_plane_or_the_maximum(tmp_path):
    stack = z_stack(CELLS, tmp_path / "z.ome.tif")
    zcyx = tifffile.imread(stack)
    for z, want in ((3, zcyx[3]), ("max", zcyx.max(axis=0))):
        source = open_source(str(stack), InputConfig(z=z))
        np.testing.assert_array_equal(source.read(WHOLE)[0], want)
        assert source.mpp == pytest.approx(0.4965346, rel=1e-6)
    with pytest.raises(UserError) as error:
        open_source(str(stack), InputConfig(z=5))
    assert "input.z 5: the file has 5 plane(s); or z: max" in str(error.value)
