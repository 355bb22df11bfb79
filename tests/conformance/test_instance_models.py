"""Every way segflow finds instances passes ``InstanceContract``, through the whole flow (plan,
fit, chunks on the Dask cluster, the ownership merge, measurement, the catalog) on a real RGB
scene with a nodata collar, in chunks of 64 px:

- ids are 1..N with no gap, each object lies in one class and the ``instances`` table holds
  exactly the array's objects (pixel counts from the array, not from segflow);
- nodata stays nodata and holds no object;
- models whose objects depend only on pixels within their reach (the distance split, prompted
  SAM) give the one-chunk result object for object, ids included;
- a wrong checkpoint is a one-line error.

Mask R-CNN and SAM run with weights built here (random, seeded; SAM with a small encoder), and
Cellpose, InstanSeg and StarDist with small models in their packages' own forms
(tests/cell_forms.py): they prove the pipeline, not the models' quality. (On this scene the
cell models' objects chain across their seeds' windows; their exactness across chunkings is
shown on known cells in tests/test_cell_models.py.)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import geopandas
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
import zarr
from rasterio.windows import Window
from scipy.ndimage import find_objects
from shapely.geometry import Point

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import load_config
from segflow.tasks.errors import UserError
from segflow.tasks.models import InputSpec, build_model
from tests import cell_forms
from tests.cell_forms import CELLPOSE_PARAMS
from tests.conftest import DATA

#: a small SAM: Meta's architecture with a 1-block, 32-wide encoder on 128-px inputs
SAM_ENCODER = {"embed_dim": 32, "depth": 1, "num_heads": 2, "global_attn_indexes": [0],
               "img_size": 128}
SAM_PARAMS = ("model.params.encoder={embed_dim: 32, depth: 1, num_heads: 2, "
              "global_attn_indexes: [0], img_size: 128}")
AUTOMATIC = ("model.params.points_per_side=4", "model.params.pred_iou_thresh=0",
             "model.params.stability_score_thresh=0")


@dataclass(frozen=True)
class InstanceCase:
    name: str
    kind: str
    overrides: tuple[str, ...]
    #: the objects depend only on pixels within the model's reach: any chunking, same objects
    exact: bool
    #: objects reach across 64-px chunk faces here (one id on both sides is then shown)
    crosses: bool = True
    bad: tuple[tuple[tuple[str, ...], str], ...] = field(default_factory=tuple)
    #: the package the case needs (an optional extra): skipped, saying so, where it is missing
    needs: str | None = None


INSTANCE_CASES = [
    InstanceCase("split", "otsu", ("model.params.sigma=1", "stats.split=distance",
                                   "stats.max_object=24"), exact=True),
    InstanceCase("maskrcnn", "maskrcnn",
                 ("model.weights={maskrcnn}", "model.params.score_threshold=0.05",
                  "model.params.max_detections=20", "model.params.context=0",
                  "stats.max_object=16", "tiling.tile=128"),
                 exact=False,
                 bad=((("model.weights={sam}",), "not a Mask R-CNN state_dict"),
                      (("model.weights={not_torch}",), "refusing to unpickle"))),
    InstanceCase("sam-automatic", "sam",
                 ("model.weights={sam}", SAM_PARAMS, *AUTOMATIC, "model.params.context=0",
                  "stats.max_object=16", "tiling.tile=96"), exact=False, crosses=False,
                 bad=((("model.weights={maskrcnn}", SAM_PARAMS), "weights do not fit"),
                      (("model.weights={sam}",), "weights do not fit"))),
    InstanceCase("sam-prompted", "sam", ("model.weights={sam}", SAM_PARAMS,
                                         "input.prompts={prompts}", "stats.max_object=12"),
                 exact=True),
    # small random networks in each package's own form (tests/cell_forms.py), run by the package
    InstanceCase("cellpose", "cellpose", ("model.weights={cellpose}", CELLPOSE_PARAMS,
                                          "model.params.cellprob_threshold=-6",
                                          "model.params.flow_threshold=0",
                                          "model.params.context=8", "stats.max_object=16",
                                          "tiling.tile=128"),
                 exact=False, needs="cellpose",
                 bad=((("model.weights={sam}",), "not a Cellpose 4 model"),)),
    InstanceCase("instanseg", "instanseg", ("model.weights={instanseg}",
                                            "model.params.context=34", "stats.max_object=16",
                                            "tiling.tile=128"),
                 exact=False, needs="instanseg",
                 bad=((("model.weights={sam}",), "not an InstanSeg TorchScript file"),)),
    InstanceCase("stardist", "stardist", ("model.weights={stardist}", "model.params.channels=[1]",
                                          "stats.max_object=16", "tiling.tile=128"),
                 exact=False, needs="stardist",
                 bad=((("model.weights={sam}",), "not a folder"),)),
]


def _package_files(folder: Path) -> dict[str, Path]:
    """The cell packages' model files, for the packages installed here."""
    out = {}
    if importlib.util.find_spec("cellpose"):
        out["cellpose"] = cell_forms.cellpose_file(folder / "cpsam_tiny")
    if importlib.util.find_spec("instanseg"):
        out["instanseg"] = cell_forms.instanseg_file(folder / "instanseg.pt")
    if importlib.util.find_spec("stardist"):
        out["stardist"] = cell_forms.stardist_folder(folder / "stardist")
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from segflow.tasks.models.sam import build_sam
    from segflow.tasks.models.vision_ops import import_torchvision

    folder = tmp_path_factory.mktemp("instances")
    out = {"rgb": folder / "rgb.tif"}
    window = Window(60, 200, 160, 128)  # the scene's corner: a nodata collar on one side
    with rasterio.open(DATA / "rgb_byte.tif") as src:
        data = src.read(window=window)
        profile = {**src.profile, "width": 160, "height": 128, "tiled": False,
                   "transform": src.window_transform(window)}
        transform = profile["transform"]
    profile.pop("blockxsize", None), profile.pop("blockysize", None)
    with rasterio.open(out["rgb"], "w", **profile) as dst:
        dst.write(data)
    torch.manual_seed(0)
    net = import_torchvision().models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3)
    out["maskrcnn"] = folder / "maskrcnn.pt"
    torch.save(net.state_dict(), out["maskrcnn"])
    out["sam"] = folder / "sam.pt"
    torch.save(build_sam("vit_b", SAM_ENCODER).state_dict(), out["sam"])
    out["not_torch"] = folder / "not_torch.pt"
    out["not_torch"].write_text("not weights\n")
    # prompts at cell centres on chunk corners and faces, in the raster's own CRS
    cells = [(64, 64), (64, 100), (30, 128), (100, 40), (127, 159), (10, 140)]
    points = [Point(*(transform * (c + 0.5, r + 0.5))) for r, c in cells]
    out["prompts"] = folder / "prompts.geojson"
    geopandas.GeoDataFrame(geometry=points, crs=profile["crs"]).to_file(out["prompts"])
    return {**out, **_package_files(folder)}


def _config(case: InstanceCase, files: dict[str, Path], overrides=None, extra=()):
    given = [f"model.kind={case.kind}", *(case.overrides if overrides is None else overrides),
             *extra]
    for name, path in files.items():
        given = [o.replace(f"{{{name}}}", str(path)) for o in given]
    return load_config(overrides=given)


def run(case: InstanceCase, files, root: Path, address: str, *extra: str) -> dict:
    cfg = _config(case, files, extra=extra)
    result = segment_image(str(files["rgb"]), str(root), cfg.model_dump(mode="json"), address)
    assert result["status"] == "succeeded"
    return result


def arrays(result: dict) -> tuple[np.ndarray, np.ndarray]:
    uri = result["output_uri"]
    return (zarr.open_array(uri, path="labels/instances/0", mode="r")[:],
            zarr.open_array(uri, path="0", mode="r")[:])


@pytest.fixture(params=INSTANCE_CASES, ids=[c.name for c in INSTANCE_CASES])
def case(request) -> InstanceCase:
    if request.param.needs and not importlib.util.find_spec(request.param.needs):
        pytest.skip(f"the {request.param.needs} extra is not installed")
    return request.param


class InstanceContract:
    """The tests every instance path passes; parametrised over ``INSTANCE_CASES``."""

    def test_objects_are_whole_counted_once_and_recorded(self, case, files, dask_address,
                                                         tmp_path):
        result = run(case, files, tmp_path, dask_address, "tiling.chunk=64",
                     "output.vectors=true")
        ids, classes = arrays(result)
        n = int(ids.max())
        assert n > 0, "no object proves nothing"
        assert result["instances"] == n and set(np.unique(ids)) == set(range(n + 1))
        per_id = np.unique(np.stack([ids.ravel(), classes.ravel()]), axis=1)
        per_id = per_id[:, per_id[0] > 0]
        assert per_id.shape[1] == n and (per_id[1] > 0).all()  # one thing class per object
        rows = run_query(str(tmp_path), "SELECT instance_id, pixels FROM instances "
                                        "ORDER BY instance_id")
        assert rows["instance_id"].to_pylist() == list(range(1, n + 1))
        np.testing.assert_array_equal(rows["pixels"].to_numpy(), np.bincount(ids.ravel())[1:])
        with rasterio.open(files["rgb"]) as ds:
            nodata = (ds.read() == ds.nodata).all(axis=0)
        assert (ids[nodata] == 0).all() and (classes[nodata] == 255).all()
        boxes = find_objects(ids)  # objects across chunk faces keep one id (and one row)
        crossing = [k + 1 for k, box in enumerate(boxes)
                    if any(s.start // 64 != (s.stop - 1) // 64 for s in box)]
        assert crossing or not case.crosses, "no object crosses a chunk face"
        polygons = pq.read_table(tmp_path / "vectors" / f"{result['image_id']}.parquet")
        found = polygons.group_by("instance_id").aggregate([("pixels", "sum")])
        by_id = dict(zip(found["instance_id"].to_pylist(), found["pixels_sum"].to_pylist()))
        assert by_id == dict(enumerate(np.bincount(ids.ravel())[1:].tolist(), start=1))

    def test_chunking_does_not_change_exact_objects(self, case, files, dask_address, tmp_path):
        if not case.exact:
            pytest.skip(f"{case.name}: a detector's objects depend on its whole tile")
        tiled = arrays(run(case, files, tmp_path / "tiled", dask_address, "tiling.chunk=64"))
        whole = arrays(run(case, files, tmp_path / "whole", dask_address, "tiling.chunk=4096"))
        for a, b in zip(tiled, whole):
            np.testing.assert_array_equal(a, b)

    def test_wrong_checkpoints_are_one_line_errors(self, case, files):
        if not case.bad:
            pytest.skip(f"{case.name}: its weights are covered by another case")
        with rasterio.open(files["rgb"]) as ds:
            spec = InputSpec(bands=ds.count, dtype=ds.dtypes[0])
        for overrides, text in case.bad:
            with pytest.raises(UserError) as error:
                build_model(_config(case, files, overrides), spec, str(files["rgb"]))
            assert text in str(error.value) and "\n" not in str(error.value)


class TestInstanceContract(InstanceContract):
    pass
