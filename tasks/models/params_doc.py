"""The model parameter reference (``docs/reference/model-params.md``), made from each kind's
``Params`` class so the page and the code never disagree.

``python -m segflow.tasks.models.params_doc > docs/reference/model-params.md`` rewrites it;
tests/test_docs.py fails when the page differs from what this prints.
"""

from __future__ import annotations

from typing import Any

from pydantic.fields import FieldInfo

from segflow.tasks.models.registry import model_kinds

HEADER = """# Model parameters

`model.params` of each `model.kind`, generated from its `Params` class
(`tasks/models/params.py`; `python -m segflow.tasks.models.params_doc` writes this page).
A key not listed for the kind, or a value of the wrong type or out of range, ends the run in
one line naming the key and the kind before any pixel is read.
"""


def _type(field: FieldInfo) -> str:
    text = str(field.annotation).replace("typing.", "").replace("NoneType", "None")
    if isinstance(field.annotation, type):
        text = field.annotation.__name__
    return text.replace("Literal", "one of ").replace("|", "or")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value: Any = field.get_default(call_default_factory=True)
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    return "null" if value is None else f"`{value}`"


def _bounds(field: FieldInfo) -> str:
    found = []
    for rule in field.metadata:
        for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(rule, name, None) is not None:
                found.append(f"{sign} {getattr(rule, name)}")
    return ", ".join(found)


def render() -> str:
    """The page, one section per installed kind, in name order."""
    parts = [HEADER]
    for name, kind in sorted(model_kinds().items()):
        doc = " ".join((kind.params.__doc__ or "").split())
        parts.append(f"\n## `{name}`\n\n{doc}\n")
        if not kind.params.model_fields:
            parts.append("\nNo parameters.\n")
            continue
        parts.append("\n| key | type | default | range | what |\n|---|---|---|---|---|\n")
        for key, field in kind.params.model_fields.items():
            parts.append(f"| `{key}` | {_type(field).replace('|', 'or')} | {_default(field)} | "
                         f"{_bounds(field)} | {field.description or ''} |\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
