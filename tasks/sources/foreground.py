"""Foreground by Otsu (``input.foreground: otsu``): cells at or below Otsu's threshold of band 1,
fitted on the exact histogram of the whole image, are background for the fit, the mask and the
statistics. MRI volumes use it to leave the air around the head out."""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from distributed import Client

from segflow.tasks.models.histogram import otsu_threshold
from segflow.tasks.sources.base import SourceBase

S = TypeVar("S", bound=SourceBase)


def fit_foreground(source: S, client: Client, chunk: int = 256) -> S:
    """The source with background (first band at or below its Otsu threshold) marked invalid."""
    value = otsu_threshold(source.to_dask(chunk)[0], source.dtype, client, source.uri)
    return replace(source, foreground_above=value)
