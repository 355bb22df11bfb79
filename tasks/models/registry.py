"""Model kinds, found through the ``segflow.models`` entry points (segflow's own included).

An entry point names either a ``ModelKind`` (the kind's parameters and where its class lives,
so a config is checked without importing torch or Dask) or a ``SegmentationModel`` subclass
itself (simplest for a third-party package; its module is imported to check a config). Another
installed package adds a kind with one line in its ``pyproject.toml``::

    [project.entry-points."segflow.models"]
    mykind = "my_package.models:MyModel"

This module imports only pydantic and the standard library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from segflow.tasks.errors import UserError
from segflow.tasks.models.params import ModelParams

if TYPE_CHECKING:
    from segflow.tasks.models.base import SegmentationModel

GROUP = "segflow.models"


@dataclass(frozen=True)
class ModelKind:
    """A model kind as the registry knows it before importing it: name, parameters, class."""

    name: str
    params: type[ModelParams]
    #: "module:Class" of the ``SegmentationModel`` subclass, imported on first use
    target: str

    def load(self) -> type[SegmentationModel]:
        module, name = self.target.split(":")
        model: type[SegmentationModel] = getattr(importlib.import_module(module), name)
        return model


def _as_kind(name: str, loaded: Any, value: str) -> ModelKind:
    """An entry point's object as a ``ModelKind`` (a model class brings its own ``Params``)."""
    if isinstance(loaded, ModelKind):
        if loaded.name != name:
            raise UserError(GROUP, f"entry point {name} = {value} names kind {loaded.name!r}")
        return loaded
    params = getattr(loaded, "Params", None)
    if isinstance(loaded, type) and isinstance(params, type) and issubclass(params, ModelParams):
        return ModelKind(name, params, value)
    raise UserError(GROUP, f"entry point {name} = {value} is neither a ModelKind nor a "
                           "SegmentationModel class with a Params class")


@cache
def model_kinds() -> dict[str, ModelKind]:
    """Every installed kind by name. Two packages registering one name is an error, so a
    plug-in can never silently replace another's model."""
    kinds: dict[str, ModelKind] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in kinds and kinds[ep.name].target != ep.value:
            raise UserError(GROUP, f"model kind {ep.name!r} is registered twice "
                                   f"({kinds[ep.name].target} and {ep.value})")
        kinds[ep.name] = _as_kind(ep.name, ep.load(), ep.value)
    return kinds


def model_kind(kind: str, where: str = "config") -> ModelKind:
    """The installed kind named ``kind``; a one-line error listing the installed ones."""
    kinds = model_kinds()
    if kind not in kinds:
        raise UserError(where, f"model.kind={kind!r} is not installed (installed: "
                               f"{', '.join(sorted(kinds))})")
    return kinds[kind]


def params_problem(kind: ModelKind, exc: ValidationError) -> str:
    """pydantic's errors on ``model.params`` as one line naming each key and the kind."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        where = f"model.params.{key}" if key else "model.params"
        if error["type"] == "extra_forbidden" and len(error["loc"]) > 1:
            lines.append(f"{where}: unknown key (model.kind={kind.name})")
        elif error["type"] == "extra_forbidden":
            lines.append(f"{where}: not a parameter of model.kind={kind.name} (its parameters: "
                         f"{', '.join(kind.params.model_fields) or 'none'})")
        elif error["type"] == "missing":
            lines.append(f"{where}: required by model.kind={kind.name}")
        else:
            given = f"={error['input']!r}" if key and not isinstance(error["input"], dict) else ""
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{where}{given}: {message} (model.kind={kind.name})")
    return "; ".join(lines)


def model_params(kind: str, params: dict[str, Any], where: str = "config") -> ModelParams:
    """``params`` validated against the kind's ``Params``; a one-line ``UserError`` otherwise."""
    found = model_kind(kind, where)
    try:
        return found.params.model_validate(params)
    except ValidationError as exc:
        raise UserError(where, params_problem(found, exc)) from None
