"""The Prefect UI, in a real browser: a real `prefect server start` (which serves the UI; the
tests' temporary API does not), one `segflow segment` run against it, and its two artifact
pages rendered by headless Chromium (Debian's ``chromium``, which ``.ci/run`` installs) through
Playwright. What is asserted is what a person sees: the class table's names and areas, read
from the rendered DOM and compared with the run's catalog rows, and the quick-look image
decoded by the browser."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from segflow.tasks.catalog.query import run_query
from tests.conftest import _free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: .ci/run installs Debian's (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (test extra)")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on a free port with its own database; yields its base URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("prefect-ui")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_API_URL": f"{url}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "prefect server start exited"
            assert time.monotonic() < deadline, "prefect server did not answer in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_ui_shows_the_class_table_and_the_quick_look(ui_server, browser, rgb_tif,
                                                           tmp_path):
    root = tmp_path / "out"
    env = {**os.environ, "PREFECT_API_URL": f"{ui_server}/api"}
    done = subprocess.run([sys.executable, "-m", "segflow.flows.cli", "segment", str(rgb_tif),
                           "--out", str(root), "--set", "model.kind=otsu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = run_query(str(root), "select class_name, area, area_unit from class_stats "
                                "order by class_id").to_pylist()
    assert len(rows) == 2 and all(r["area"] > 0 for r in rows)

    found = httpx.post(f"{ui_server}/api/artifacts/filter", json={}, timeout=10).json()
    by_type = {a["type"]: a for a in found}
    assert set(by_type) == {"markdown", "image"}
    page = browser.new_page()
    try:
        page.goto(f"{ui_server}/artifacts/artifact/{by_type['markdown']['id']}")
        table = page.locator("table").first
        table.wait_for(timeout=30_000)
        cells = [[c.strip() for c in row.locator("td").all_inner_texts()]
                 for row in table.locator("tbody tr").all()]
        assert len(cells) == len(rows)
        for shown, row in zip(cells, rows, strict=True):
            # columns: "<id> <name>", pixels, "<area> <unit>", fraction
            assert shown[0].split(" ", 1)[1] == row["class_name"]
            number, unit = shown[2].split()
            assert unit == row["area_unit"]
            assert float(number.replace(",", "")) == pytest.approx(row["area"], rel=1e-6)

        page.goto(f"{ui_server}/artifacts/artifact/{by_type['image']['id']}")
        image = page.locator("img[src^='data:image/jpeg']").first
        image.wait_for(timeout=30_000)
        page.wait_for_function("img => img.complete", arg=image.element_handle(),
                               timeout=30_000)
        width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert 0 < max(width, height) <= 384  # decoded by the browser: the picture loads
    finally:
        page.close()
