"""README's per-config quality scores are the figures ``benchmarks/quality.py`` recorded in
``benchmarks/quality.json`` (rerun it and this fails until README follows)."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).parents[1]


def _readme_rows() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("### How good the shipped configs are", 1)[1].split("\n### ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    return [(cells[1].strip().strip("`"), cells[-2]) for cells in rows]


def test_every_shipped_config_has_a_row_and_its_scores_are_the_benchmarks():
    recorded = json.loads((REPO / "benchmarks" / "quality.json").read_text())
    rows = _readme_rows()
    shipped = {p.name for p in (REPO / "configs").glob("*.yaml")} - {"defaults.yaml",
                                                                      "deployments.yaml"}
    assert {config for config, _ in rows} == shipped
    for config, scores in rows:
        figures = [r["score"] for r in recorded if r["config"] == config]
        assert figures, config
        for number, percent in re.findall(r"(?<!≥ )(\d+\.\d+)( %)?", scores):  # not "IoU ≥ 0.5"
            places = len(number.split(".")[1])
            values = [100 * f if percent else f for f in figures]
            assert any(round(v, places) == float(number) for v in values), (config, number)
