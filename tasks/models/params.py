"""Reading ``model.params``: validated values with their defaults, one-line errors otherwise."""

from __future__ import annotations

from typing import Any

from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec


def band_param(params: dict[str, Any], spec: InputSpec, source: str) -> int:
    """The validated ``model.params.band`` (1-based, default 1)."""
    band = int(params.get("band", 1))
    if not 1 <= band <= spec.bands:
        raise UserError(source,
                           f"model.params.band={band} but the input has {spec.bands} bands")
    return band


def at_least(params: dict[str, Any], key: str, default: float, minimum: float,
             source: str) -> float:
    """``model.params[key]`` (or ``default``), which must be ``>= minimum``."""
    value = float(params.get(key, default))
    if value < minimum:
        raise UserError(source, f"model.params.{key}={value:g}: use a value >= {minimum:g}")
    return value
