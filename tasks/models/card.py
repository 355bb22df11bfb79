"""A model card: what input a model was trained on, checked against the image before any pixel
is read.

A card comes from ``model.card`` (a small YAML or JSON file) or from what the model form ships
(TorchGeo weights metadata, a Hugging Face ``preprocessor_config.json``, nnU-Net's
``dataset.json`` and plans, a MONAI bundle's ``metadata.json``, an ONNX file's metadata); a
``model.card`` file wins key by key. A band-count or band-name mismatch is an error; a pixel size
off by more than ``tolerance`` is resampled where the reader can (a slide's pyramid level, a STAC
item's grid) when ``on_mismatch: resample``, else refused.

No library reads such cards (each form has its own metadata), so this module is segflow's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from segflow.tasks.config import Normalize
from segflow.tasks.errors import UserError

#: metres per unit of a cell size (the readers' UDUNITS names and the card's short ones)
METRES = {"um": 1e-6, "µm": 1e-6, "micrometer": 1e-6, "mm": 1e-3, "millimeter": 1e-3,
          "m": 1.0, "meter": 1.0}

#: Sentinel-2 and Landsat band ids by their STAC common name, so a card naming ``B04`` fits an
#: input band named ``red`` (STAC's eo common names)
_COMMON = {
    "coastal": {"b01", "b1"}, "blue": {"b02", "b2"}, "green": {"b03", "b3"},
    "red": {"b04", "b4"}, "rededge1": {"b05"}, "rededge2": {"b06"}, "rededge3": {"b07"},
    "nir": {"b08", "b8", "b5"}, "nir08": {"b8a"}, "nir09": {"b09"}, "cirrus": {"b10"},
    "swir16": {"b11", "b6"}, "swir22": {"b12", "b7"},
}


class ModelCard(BaseModel):
    """The input a model expects and the classes it outputs (every key optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: band names (or STAC common names) in the model's input order
    bands: list[str] | None = None
    #: the band count, where the names are unknown
    num_bands: int | None = Field(None, ge=1)
    #: (raw - mean) / std per band, in the input's raw units
    normalize: Normalize | None = None
    #: the size of one cell the model was trained at, per axis or one for all, in ``unit``
    pixel_size: float | list[float] | None = None
    unit: Literal["m", "mm", "um"] = "m"
    #: relative difference of the pixel size accepted as is (0.25: 25 %)
    tolerance: float = Field(0.25, ge=0)
    on_mismatch: Literal["refuse", "resample"] = "refuse"
    #: class names in output order
    classes: list[str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.bands and self.num_bands and len(self.bands) != self.num_bands:
            raise ValueError(f"{len(self.bands)} band names but num_bands={self.num_bands}")
        if self.normalize and len(self.normalize.mean) != len(self.normalize.std):
            raise ValueError("normalize needs as many means as stds")
        return self

    @property
    def band_count(self) -> int | None:
        return len(self.bands) if self.bands else self.num_bands

    def merged(self, other: ModelCard | None) -> ModelCard:
        """This card with the keys ``other`` states replacing its own."""
        if other is None:
            return self
        return self.model_copy(update=other.model_dump(exclude_unset=True))

    def describe_size(self) -> str:
        sizes = self.pixel_size if isinstance(self.pixel_size, list) else [self.pixel_size]
        return " x ".join(f"{s:g}" for s in sizes if s is not None) + f" {self.unit}"


def read_card(path: str) -> ModelCard:
    """``model.card``: a YAML or JSON file holding one card; a one-line error otherwise."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(path, "model card not found")
    try:
        data = yaml.safe_load(file.read_text())
        return ModelCard.model_validate(data or {})
    except yaml.YAMLError as exc:
        raise UserError(path, f"model card is not YAML or JSON: {exc}".splitlines()[0]) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"]) or "card"
        raise UserError(path, f"model card {key}: {error['msg']}") from None


def card_from_json(path: Path) -> dict[str, Any]:
    """A form's JSON metadata file (never executed), or a one-line error naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(str(path), f"unreadable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(str(path), "expected a JSON object")
    return data


def _canonical(name: str) -> str:
    low = name.strip().lower()
    for common, ids in _COMMON.items():
        if low == common or low in ids:
            return common
    return low


def check_bands(card: ModelCard, bands: int, names: list[str] | None, source: str,
                model: str) -> None:
    """The band count, and the names where both sides name their bands, in order."""
    want = card.band_count
    if want is not None and want != bands:
        named = f" ({', '.join(card.bands)})" if card.bands else ""
        raise UserError(source, f"model card of {model}: {want} bands{named}, the input has "
                                f"{bands}")
    if card.bands and names and all(names):
        got = [_canonical(n) for n in names]
        if got != [_canonical(n) for n in card.bands]:
            raise UserError(source, f"model card of {model}: bands {', '.join(card.bands)} in "
                                    f"this order, the input's are {', '.join(names)}")


def size_ratio(card: ModelCard, unit: str | None, sizes: list[float], source: str,
               model: str) -> float | None:
    """Input cell size over the card's, along the axis furthest off (None: within tolerance).
    An input without a physical cell size cannot be checked: refused, as a silent pass would
    hide the one mismatch the card exists to catch."""
    if card.pixel_size is None:
        return None
    if unit not in METRES:
        raise UserError(source, f"model card of {model}: pixel size {card.describe_size()}, "
                                "the input has no physical cell size (set input.mpp for a "
                                "slide, or drop pixel_size from the card)")
    want = card.pixel_size if isinstance(card.pixel_size, list) else [card.pixel_size] * len(sizes)
    if len(want) != len(sizes):
        raise UserError(source, f"model card of {model}: pixel size for {len(want)} axes, the "
                                f"input has {len(sizes)}")
    ratios = [s * METRES[unit] / (w * METRES[card.unit]) for s, w in zip(sizes, want)]
    worst = max(ratios, key=lambda r: abs(r - 1))
    return None if abs(worst - 1) <= card.tolerance else worst


def size_problem(card: ModelCard, unit: str | None, sizes: list[float], ratio: float,
                 source: str, model: str) -> UserError:
    given = " x ".join(f"{s:g}" for s in sizes) + f" {unit}"
    return UserError(source, f"model card of {model}: pixel size {card.describe_size()} "
                             f"(tolerance {card.tolerance:.0%}), the input's is {given} "
                             f"({ratio:.3g}x); resample the input or set the card's "
                             "on_mismatch: resample where the reader can (slides, STAC items)")
