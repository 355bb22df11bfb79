"""The model card checked against the opened input, before any pixel is read: bands by count
and name, then the pixel size, resampled where the reader can (a slide's pyramid level, a STAC
item's grid) and the card allows it, else refused in one line."""

from __future__ import annotations

from segflow.tasks.config import JobConfig
from segflow.tasks.models.base import SegmentationModel
from segflow.tasks.models.card import METRES, ModelCard, check_bands, size_problem, size_ratio
from segflow.tasks.sources.base import SourceBase
from segflow.tasks.sources.registry import open_source


def fit_to_card(model: SegmentationModel, reader: SourceBase, config: JobConfig,
                source: str) -> SourceBase:
    """``reader`` when the input fits the model's card, or the reader reopened at the card's
    pixel size; a one-line ``UserError`` naming what does not fit otherwise."""
    card = model.card
    if card is None:
        return reader
    name = model.identity()
    check_bands(card, len(reader.bands), reader.band_names(), source, name)
    unit, sizes = reader.cell_size()
    ratio = size_ratio(card, unit, sizes, source, name)
    if ratio is None:
        return reader
    resampled = _resampled(card, reader, config, source) if card.on_mismatch == "resample" \
        else None
    if resampled is not None:
        unit2, sizes2 = resampled.cell_size()
        if size_ratio(card, unit2, sizes2, source, name) is None:
            return resampled
    raise size_problem(card, unit, sizes, ratio, source, name)


def _resampled(card: ModelCard, reader: SourceBase, config: JobConfig,
               source: str) -> SourceBase | None:
    """The input reopened nearer the card's pixel size, where its reader can: a slide at the
    pyramid level nearest it, a STAC item on a grid of that cell size. None elsewhere."""
    size = card.pixel_size if not isinstance(card.pixel_size, list) else min(card.pixel_size)
    assert size is not None
    metres = size * METRES[card.unit]
    if reader.modality == "slide":
        update = {"target_mpp": metres / METRES["um"]}
    elif reader.reader == "stac" and reader.georef is not None:
        update = {"resolution": metres / reader.georef.unit_factor}
    else:
        return None
    return open_source(source, config.input.model_copy(update=update))
