"""Cell and nucleus packages (Cellpose, StarDist, InstanSeg) behind segflow's ownership merge.

Each package runs on one read window (a chunk with its halo) as it runs on a whole image: its
own tiling, network and post-processing. Its label image is handed to the ownership rule
(models/instance.py): an object is kept by the window holding its first cell, so none is
counted twice and none is cut where the package's own block-wise modes cut or over-merge.

What a package does per image, percentile normalisation, is fitted once on the whole image
instead (the exact histogram, models/histogram.py), so the input each window sees does not
depend on the chunking; each package is then told not to normalise again.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from skimage.segmentation import relabel_sequential

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec
from segflow.tasks.models.card import ModelCard, read_card
from segflow.tasks.models.histogram import percentiles
from segflow.tasks.models.instance import (
    InstanceModel,
    Objects,
    edge_layer,
    merge_tiles,
    reaching,
    tile_windows,
)
from segflow.tasks.models.intensity import FIT_CHUNK
from segflow.tasks.models.params import CellParams
from segflow.tasks.models.torch_model import pick_device

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase

DEFAULT_TILE = 512  # px per side of one package call when tiling.tile is auto


class CellModel(InstanceModel):
    """A package that labels cells or nuclei in a normalised (channels, y, x) float32 image."""

    accelerated = True
    Params: ClassVar[type[CellParams]] = CellParams
    #: the default name of the objects' class
    thing: ClassVar[str] = "cell"
    #: the most channels the package reads
    max_channels: ClassVar[int] = 3

    def __init__(self, params: CellParams, weights: str, digest: str, spec: InputSpec,
                 cfg: JobConfig, source: str, card: ModelCard | None = None) -> None:
        if spec.ndim != 2:
            raise UserError(source, f"model.kind={self.kind} runs on 2-D images here")
        classes = class_table(cfg.model, ["background", self.thing_name(params)])
        if len(classes) != 2:
            raise UserError(source, f"model.kind={self.kind} finds one class of objects: "
                                    f"model.classes names {len(classes)} (give two)")
        super().__init__(classes, params)
        channels = params.channels or list(range(1, min(spec.bands, self.max_channels) + 1))
        if len(channels) > self.max_channels or max(channels) > spec.bands:
            raise UserError(source, f"model.params.channels={channels}: {self.kind} reads at "
                                    f"most {self.max_channels} of the image's {spec.bands} bands")
        self.channels = channels
        self.weights, self.digest = weights, digest
        self.gpu, self.amp = cfg.cluster.gpu, cfg.model.amp
        self.tile = DEFAULT_TILE if cfg.tiling.tile == "auto" else int(cfg.tiling.tile)
        if cfg.model.card:  # the user's card wins key by key over the model's own
            card = (card or ModelCard()).merged(read_card(cfg.model.card))
        self.card = card
        self.reach = params.context
        self.receptive_field = self.reach + self.max_object
        #: per channel, the values mapped to 0 and 1 (fitted on the whole image)
        self.low: list[float] | None = None
        self.high: list[float] | None = None

    def thing_name(self, params: CellParams) -> str:
        """The default name of the objects' class for these params."""
        return self.thing

    def fit(self, source: SourceBase, client: Client) -> None:
        values = source.to_dask(FIT_CHUNK)[[c - 1 for c in self.channels]]
        ranges = percentiles(values, source.dtype, client, source.uri,
                             tuple(self.params.percentiles))  # type: ignore[attr-defined]
        self.low = [lo for lo, _ in ranges]
        self.high = [hi for _, hi in ranges]

    def normalised(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(channels, *window) float32: each channel's fitted range mapped to 0..1, nodata 0."""
        assert self.low is not None and self.high is not None, "fit() before predict()"
        low = np.asarray(self.low, np.float32)[:, None, None]
        span = np.maximum(np.asarray(self.high, np.float32)[:, None, None] - low, 1e-3)
        image = (pixels[[c - 1 for c in self.channels]].astype(np.float32) - low) / span
        return np.where(valid, image, 0).astype(np.float32)

    def device(self) -> str:
        return pick_device(self.gpu)

    @abstractmethod
    def label(self, image: np.ndarray) -> np.ndarray:
        """The package's label image (y, x) of a normalised window (channels, y, x)."""

    @property
    def overlap(self) -> int:
        """Cells tiles overlap by: the model's reach plus the largest object, rounded up to
        the model's stride so that every tile starts on its pixel grid."""
        return -(-(self.reach + self.max_object) // self.stride) * self.stride

    @property
    def side(self) -> int:
        """Every tile is padded to this one square side (``tiling.tile`` when that leaves a
        core of at least ``overlap``): packages whose output depends on the image size
        (InstanSeg's coordinate map spans its input, Cellpose places its own tiles by it)
        then see every tile alike, whatever the chunking."""
        core = max(self.tile - 2 * self.overlap, self.overlap)
        return -(-core // self.stride) * self.stride + 2 * self.overlap

    def predict_objects(self, pixels: np.ndarray, valid: np.ndarray,
                        window: tuple[slice, ...], shape: tuple[int, ...]) -> Objects:
        image = self.normalised(pixels, valid)
        side, done = self.side, []
        for read, core in tile_windows(pixels.shape[1:], side, self.overlap):
            padded = np.zeros((len(image), side, side), np.float32)
            crop = image[(slice(None), *read)]
            padded[:, :crop.shape[1], :crop.shape[2]] = crop
            labels = np.asarray(self.label(padded))[:crop.shape[1], :crop.shape[2]]
            labels = np.where(valid[read], labels, 0).astype(np.int64)
            labels = relabel_sequential(labels)[0].astype(np.int32)
            count = int(labels.max())
            in_image = tuple(slice(w.start + r.start, w.start + r.stop)
                             for w, r in zip(window, read))
            cut = reaching(labels, count, edge_layer(in_image, shape))
            done.append((read, core, Objects(labels, np.ones(count, np.int64),
                                             np.ones(count, np.float32), cut)))
        return merge_tiles(pixels.shape[1:], done)

    def fitted(self) -> dict[str, Any]:
        return {"channels": self.channels, "low": self.low, "high": self.high}

    def identity(self) -> str:
        return f"{self.kind}({self.weights.rsplit('/', 1)[-1]}@{self.digest})"
