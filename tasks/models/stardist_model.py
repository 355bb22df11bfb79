"""StarDist 2-D from its model folder (``config.json``, ``weights_best.h5``), run by
``predict_instances`` on each tile.

StarDist's own ``predict_instances_big`` cuts an image into blocks and keeps objects whose
polygons fit a block's interior; here each tile's objects go to segflow's ownership merge
instead (models/cells.py), so no object is counted twice or cut, and chunk origins are aligned
to the network's downsampling (its ``grid`` times 2 per U-Net level), so every tile sees the
same pixel grid. ``csbdeep``'s percentile normalisation is fitted once on the whole image and
``predict_instances`` is given ``normalizer=None``.

StarDist needs TensorFlow (the ``stardist`` extra installs ``tensorflow-cpu``; a GPU worker
needs TensorFlow's CUDA build). 3-D models (``StarDist3D``) are refused here: segflow's cell
backends run on 2-D images.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from segflow.tasks.config import JobConfig
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec
from segflow.tasks.models.cells import CellModel
from segflow.tasks.models.params import StarDistParams
from segflow.tasks.models.torch_model import cached, files_digest, weights_folder

WEIGHTS = ("weights_best.h5", "weights_last.h5")  # as StarDist loads them, best first


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(str(folder), f"config.json is not JSON: {exc}") from None
    if config.get("n_dim", 2) != 2:
        raise UserError(str(folder), f"a {config.get('n_dim')}-D StarDist model: segflow runs "
                                     "StarDist2D models")
    return config


def load_stardist(folder: str) -> Any:
    """The StarDist2D model of ``folder`` (TensorFlow is imported here, on the worker)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TensorFlow's and csbdeep's start-up notes
        from stardist.models import StarDist2D

        path = Path(folder)
        return StarDist2D(None, name=path.name, basedir=str(path.parent))


class StarDistModel(CellModel):
    """Star-convex nuclei from a StarDist 2-D model folder."""

    kind = "stardist"
    Params = StarDistParams
    thing = "nucleus"

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> StarDistModel:
        folder = Path(weights_folder(cfg, source, "a StarDist model folder (config.json, "
                                                  "weights_best.h5)", ("config.json",)))
        found = [folder / name for name in WEIGHTS if (folder / name).is_file()]
        if not found:
            raise UserError(str(folder), f"holds no {' or '.join(WEIGHTS)}: a StarDist folder "
                                         "without weights predicts from random ones")
        config = read_config(folder)
        params = StarDistParams.model_validate(cfg.model.params)
        files = [folder / "config.json", folder / "thresholds.json", found[0]]
        model = cls(params, str(folder), files_digest(files), spec, cfg, source)
        wanted = int(config.get("n_channel_in", 1))
        if len(model.channels) != wanted:
            raise UserError(source, f"the StarDist model reads {wanted} channel(s); "
                                    f"model.params.channels names {len(model.channels)}")
        depth = int(config.get("unet_n_depth", 2)) if config.get("backbone", "unet") == "unet" \
            else 0
        grid = config.get("grid", [1, 1])
        model.stride = int(max(grid)) * 2 ** depth  # chunk origins and halos align to it
        return model

    def label(self, image: np.ndarray) -> np.ndarray:
        model = cached((self.weights, f"{self.kind}:{self.digest}:tensorflow"), "tensorflow",
                       lambda: load_stardist(self.weights))
        params: StarDistParams = self.params  # type: ignore[assignment]
        img, axes = (image[0], "YX") if len(image) == 1 else (np.moveaxis(image, 0, -1), "YXC")
        labels, _ = model.predict_instances(img, axes=axes, normalizer=None,
                                            prob_thresh=params.prob_thresh,
                                            nms_thresh=params.nms_thresh,
                                            show_tile_progress=False, verbose=False)
        return np.asarray(labels)
