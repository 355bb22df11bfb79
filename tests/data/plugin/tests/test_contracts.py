"""segflow's shipped contracts, run on this plug-in's reader and model kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from segflow import samples
from segflow.testing import ModelContract, ReaderContract


def landsat(folder: Path) -> Path:
    """The sample Landsat scene's first 3 bands (a 200 x 240 crop) as a .npy array."""
    with rasterio.open(samples.FOLDER / "nc_lsat7_2000_b12345.tif") as src:
        array = src.read([1, 2, 3], window=((100, 300), (50, 290)))
    path = folder / "scene.npy"
    np.save(path, array)
    return path


class TestNpyReader(ReaderContract):
    reader_name = "npy"
    suffix = ".npy"
    windows = [(slice(3, 40), slice(5, 60)), (slice(150, 200), slice(200, 240))]

    def make(self, folder: Path) -> Path:
        return landsat(folder)

    def expected(self, path: Path) -> dict:
        array = np.load(path)
        return {"pixels": array, "valid": np.ones(array.shape[1:], bool),
                "physical": {(0, 0): (0.5, 0.5), (10, 20): (20.5, 10.5)}}

    def corrupt(self, path: Path, folder: Path) -> Path:
        bad = folder / path.name
        bad.write_bytes(path.read_bytes()[:60])
        return bad


class TestBrighter(ModelContract):
    kind = "brighter"
    overrides = ("model.params.factor=1.1",)
    bad = ((("model.params.factor=-1",), "model.params.factor=-1"),
           (("model.params.band=4",), "band=4 but the input has 3 bands"))

    def make_image(self, folder: Path) -> Path:
        return landsat(folder)
