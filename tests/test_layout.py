"""The package layout holds: tasks/ never imports flows/, every stage folder is packaged, and
modality is never decided outside the reader registry."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_tasks_never_import_flows():
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p)
                                                  if m.startswith("segflow.flows"))
                 for p in (REPO / "tasks").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_every_package_folder_is_in_the_wheel():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for name, folder in config["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            assert ".".join((name, *parts)) in listed, f"{init.parent} is not packaged"


def test_no_modality_dispatch_outside_the_registry():
    """Modality and suffixes live in sources/registry.py: no isinstance on reader classes and no
    suffix lists of image formats anywhere else."""
    readers = {"Raster", "Slide", "Volume", "ZarrVolume"}
    for path in [*(REPO / "tasks").rglob("*.py"), *(REPO / "flows").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                named = {getattr(n, "id", "") for n in ast.walk(node.args[1])}
                assert not named & readers, f"{path}: isinstance on a reader class"
        if path.name != "registry.py":
            assert '".nii"' not in path.read_text() and '".svs"' not in path.read_text(), path
