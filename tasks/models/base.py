"""The one model interface: fit global parameters on the whole image, then predict any block.

Everything a method needs travels inside the (picklable) model object, so a Dask worker gets
the fitted model once and applies it to every chunk it owns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from segflow.tasks.config import ClassSpec, JobConfig
from segflow.tasks.models.card import ModelCard
from segflow.tasks.models.params import ModelParams

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase


def label_dtype(n_labels: int) -> tuple[np.dtype, int]:
    """The dtype of class ids 0..``n_labels`` - 1, everywhere (model output, stitching, the
    store): the smallest unsigned one that keeps its maximum free for nodata, and that value."""
    return (np.dtype("uint8"), 255) if n_labels < 255 else (np.dtype("uint16"), 65535)


@dataclass(frozen=True)
class InputSpec:
    """What a model is fed: the number of bands, their dtype, and 2 or 3 spatial axes."""

    bands: int
    dtype: str
    ndim: int = 2


class SegmentationModel(ABC):
    """A segmentation method. Subclasses state what is special about them; mechanics live here."""

    kind: ClassVar[str]
    #: the kind's ``model.params`` (tasks/models/params.py); checked when the config is read
    Params: ClassVar[type[ModelParams]] = ModelParams
    #: True for instance models (tasks/models/instance.py): objects, not only classes
    instance: ClassVar[bool] = False
    #: pixels of context on each side a prediction depends on (0 for per-pixel methods)
    receptive_field: int = 0
    #: the model's output stride; chunk origins and halos are aligned to it
    stride: int = 1
    #: True for methods that run faster on a GPU: the flow sends their chunks to GPU workers
    accelerated: ClassVar[bool] = False
    #: True for methods with a per-class score (``predict_scores``, ``output.probabilities``)
    soft: ClassVar[bool] = False
    #: the input the model was trained on, checked against the image when it is planned
    card: ModelCard | None = None

    def __init__(self, classes: list[ClassSpec], params: ModelParams) -> None:
        self.classes = classes
        self.params = params

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> SegmentationModel:
        """Build from a job config, raising SegflowError for anything the user must fix."""

    def fit(self, source: SourceBase, client: Client) -> None:
        """Fit global parameters on the whole image (bounded memory). Default: nothing to fit."""

    @abstractmethod
    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        """Class ids for the ``core`` of one block (bands, *spatial) read with a halo.

        ``valid`` (*spatial) marks real cells; methods that need context use the halo around core.
        """

    def predict_at(self, pixels: np.ndarray, valid: np.ndarray, core: tuple[slice, ...],
                   window: tuple[slice, ...]) -> np.ndarray:
        """``predict`` for a block read at ``window`` in the image, for methods whose
        prediction depends on where a cell lies (a bias field); the rest ignore it."""
        return self.predict(pixels, valid, core)

    def predict_scores(self, pixels: np.ndarray, valid: np.ndarray,
                       core: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Class ids for ``core`` and per-class scores in 0..1, (classes, *core), whose argmax
        is those ids. Only methods that are ``soft`` have them."""
        raise NotImplementedError(f"{self.kind} has no per-class score")

    def identity(self) -> str:
        """What produced the mask, for the catalog's ``model`` column: kind and fitted values."""
        return self.kind

    def fitted(self) -> dict[str, Any]:
        """Fitted global parameters, recorded in the store's attributes."""
        return {}

    @staticmethod
    def band_of(pixels: np.ndarray, band: int) -> np.ndarray:
        """One band (1-based index into the selected bands) as float64."""
        return pixels[band - 1].astype(np.float64)
