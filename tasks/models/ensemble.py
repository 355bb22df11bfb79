"""An ensemble: the mean of several deep models' class probabilities (``model`` plus each of
``model.ensemble``), then the argmax.

Each member tiles and stitches the chunk itself on the worker's device, so an ensemble is exact
under tiling whenever every member is; its halo must cover the widest receptive field and its
chunks align to every member's stride.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.tasks.config import JobConfig
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec, SegmentationModel, label_dtype

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase


#: what a member takes from ``model`` unless it sets its own (folds of one model share them)
INHERITED = ("classes", "normalize", "card", "tta", "amp")


class EnsembleModel(SegmentationModel):
    """Averages its members' softmax probabilities; they must name the same classes."""

    kind = "ensemble"
    soft = True
    accelerated = True

    def __init__(self, members: list[SegmentationModel]) -> None:
        first = members[0]
        super().__init__(first.classes, first.params)
        self.members = members
        self.card = first.card
        self.receptive_field = max(m.receptive_field for m in members)
        self.stride = math.lcm(*(m.stride for m in members))

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> EnsembleModel:
        from segflow.tasks.models import model_class

        outer = cfg.model.model_copy(update={"ensemble": []})
        configs = [outer, *(m.model_copy(update={key: getattr(outer, key) for key in INHERITED
                                                 if key not in m.model_fields_set})
                            for m in cfg.model.ensemble)]
        members = [model_class(m.kind).from_config(cfg.model_copy(update={"model": m}),
                                                   spec, source) for m in configs]
        for i, member in enumerate(members):
            if not member.soft:
                raise UserError(source, f"model.ensemble: {member.kind} has no class "
                                        "probabilities to average (deep semantic models only)")
            names = [c.name for c in member.classes]
            first = [c.name for c in members[0].classes]
            if names != first:
                raise UserError(source, f"model.ensemble[{i - 1}] outputs classes "
                                        f"{', '.join(names)}; model's are {', '.join(first)}")
        return cls(members)

    def fit(self, source: SourceBase, client: Client) -> None:
        for member in self.members:
            member.fit(source, client)

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        return self.predict_scores(pixels, valid, core)[0]

    def predict_scores(self, pixels: np.ndarray, valid: np.ndarray,
                       core: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        total: np.ndarray | None = None
        for member in self.members:
            probs = member.predict_scores(pixels, valid, core)[1]
            total = probs.astype(np.float32) if total is None else total + probs
        assert total is not None
        mean = total / len(self.members)
        return mean.argmax(axis=0).astype(label_dtype(len(self.classes))[0]), mean

    def identity(self) -> str:
        return f"ensemble({' + '.join(m.identity() for m in self.members)})"

    def fitted(self) -> dict[str, Any]:
        return {"members": [{"model": m.identity(), **m.fitted()} for m in self.members]}
