"""The documentation: README.md is a short front page and the rest lives in ``docs/``, a MkDocs
site that builds with ``--strict`` (no broken link or anchor, no missing page, no page left out
of the nav). Wherever a page shows the per-config quality scores, they are the figures
``benchmarks/quality.py`` recorded in ``benchmarks/quality.json`` (rerun it and this fails until
the docs follow). Every repository file, module and dotted ``segflow.tasks``/``segflow.flows``
name the pages mention exists, so a renamed module cannot leave a stale page behind."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
DOCS = REPO / "docs"
README_MAX_LINES = 300
QUALITY_HEADING = "How good the shipped configs are"
#: top-level folders whose files the pages name by path
SOURCE_DIRS = ("flows", "tasks", "segflow", "tests", "benchmarks", "samples", "configs", "infra")


def _pages() -> list[Path]:
    """Every page a reader sees: the front page, the changelog and the whole docs site."""
    return [REPO / "README.md", REPO / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _quality_sections() -> list[tuple[Path, str]]:
    """(page, section text) for every page with the quality table, up to its next heading of the
    same or a higher level."""
    found = []
    for page in _pages():
        text = _without_code_blocks(page.read_text())
        heading = re.search(rf"^(#+) {re.escape(QUALITY_HEADING)}\s*$", text, re.M)
        if heading:
            rest = text[heading.end():]
            following = re.search(rf"^#{{1,{len(heading.group(1))}}} ", rest, re.M)
            found.append((page, rest[:following.start()] if following else rest))
    return found


def _quality_rows(section: str) -> list[tuple[str, str]]:
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    return [(cells[1].strip().strip("`"), cells[-2]) for cells in rows]


def test_every_shipped_config_has_a_row_and_its_scores_are_the_benchmarks():
    recorded = json.loads((REPO / "benchmarks" / "quality.json").read_text())
    shipped = {p.name for p in (REPO / "configs").glob("*.yaml")} - {"defaults.yaml",
                                                                      "deployments.yaml"}
    sections = _quality_sections()
    assert sections, f"no page has a '{QUALITY_HEADING}' section"
    for page, section in sections:
        rows = _quality_rows(section)
        assert {config for config, _ in rows} == shipped, page
        for config, scores in rows:
            figures = [r["score"] for r in recorded if r["config"] == config]
            assert figures, (page, config)
            # every figure, but not the threshold in "IoU ≥ 0.5"
            for number, percent in re.findall(r"(?<!≥ )(\d+\.\d+)( %)?", scores):
                places = len(number.split(".")[1])
                values = [100 * f if percent else f for f in figures]
                assert any(round(v, places) == float(number) for v in values), \
                    (page.name, config, number)


def test_readme_is_a_front_page_of_at_most_300_lines():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move text to docs/"
    text = "\n".join(lines)
    for command in ("make demo", "make test"):  # the two commands, as the Makefile has them
        assert command in text
        assert re.search(rf"^{command.split()[1]}:", (REPO / "Makefile").read_text(), re.M)


def test_docs_build_with_mkdocs_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install mkdocs==1.6.1)")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    built = {p.relative_to(site).with_suffix("").as_posix() for p in site.rglob("index.html")}
    for page in DOCS.rglob("*.md"):  # every page is in the site (strict: and in the nav)
        name = page.relative_to(DOCS).with_suffix("").as_posix()
        assert ("index" if name == "index" else f"{name}/index") in built, name


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (MkDocs) gives a heading; GitHub's is the same for the
    headings the front page links to."""
    text = re.sub(r"[`*]", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading))
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = _without_code_blocks(page.read_text())
    return {_slug(h) for h in re.findall(r"^#+ (.+?)\s*$", text, re.M)}


def test_links_outside_the_site_resolve():
    """README and CHANGELOG sit outside docs/, where MkDocs does not check them: their relative
    links (into docs/, to BENCHMARKS.md, ...) must reach a file, and an anchor a heading."""
    checked = 0
    for page in (REPO / "README.md", REPO / "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", _without_code_blocks(page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), (page.name, target)
            if anchor:
                assert anchor in _anchors(resolved), (page.name, target)
            checked += 1
    assert checked


def test_every_file_and_module_the_pages_name_exists():
    """Paths such as ``tasks/mask/run.py``, bare module names such as ``lease.py`` (the layout
    tree), and dotted names such as ``segflow.tasks.catalog.query.run_query``."""
    modules = {p.name for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")}
    missing = []
    for page in _pages():
        text = page.read_text()
        for path in re.findall(rf"(?<![\w./-])((?:{'|'.join(SOURCE_DIRS)})/[\w./-]*\w)", text):
            if not (REPO / path).exists():
                missing.append((page.name, path))
        for name in re.findall(r"(?<![\w./-])([a-z_][a-z0-9_]*\.py)\b", text):
            if name not in modules:
                missing.append((page.name, name))
        for dotted in re.findall(r"\bsegflow\.((?:tasks|flows)(?:\.\w+)+)", text):
            if not _defined(dotted.split(".")):
                missing.append((page.name, f"segflow.{dotted}"))
    assert not missing, missing


def _defined(parts: list[str]) -> bool:
    """``tasks.catalog.query.run_query``: a module (or package) of the repository, then at most
    one name it defines."""
    for i in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:i])
        module = base.with_suffix(".py") if base.with_suffix(".py").exists() else \
            base / "__init__.py"
        if not module.exists():
            continue
        rest = parts[i:]
        if not rest:
            return True
        if len(rest) > 1:
            return False
        source = module.read_text()
        return bool(re.search(rf"^(?:def|class) {rest[0]}\b|^{rest[0]}\s*[:=]", source, re.M)
                    or re.search(rf"\bimport .*\b{rest[0]}\b", source))
    return False


def test_the_model_parameter_reference_is_generated_from_the_params_classes():
    """docs/reference/model-params.md is what ``segflow.tasks.models.params_doc`` prints:
    rerun it after changing a Params class."""
    from segflow.tasks.models.params_doc import render

    page = Path(__file__).parents[1] / "docs" / "reference" / "model-params.md"
    assert page.read_text() == render(), (
        "stale: python -m segflow.tasks.models.params_doc > docs/reference/model-params.md")
