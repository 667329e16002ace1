"""One real end-to-end check: `streamlit run` + headless Chromium, move a control, see numbers and plot change."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "COMPRESSION_DASH_DB": str(tmp_path_factory.mktemp("e2e") / "results.db")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not become healthy: " + proc.stdout.read().decode(errors="replace")[-2000:])
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def _metric(page, label: str) -> str:
    card = page.locator('[data-testid="stMetric"]', has_text=label).first
    return card.locator('[data-testid="stMetricValue"]').inner_text()


def test_move_a_control_and_the_numbers_and_plot_change(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(server)
        page.wait_for_selector('[data-testid="stMetric"]', timeout=90_000)
        page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=90_000)
        size_before = _metric(page, "Stored size")
        points_before = page.locator(".js-plotly-plot .scatterlayer .point").count()
        page.screenshot(path=str(ARTIFACTS / "dashboard-explore-before.png"), full_page=True)

        # Move the pruning slider with the keyboard: focus its thumb, press End (the maximum, 95 %).
        thumb = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type="range"]').first
        thumb.focus()
        thumb.press("End")
        page.wait_for_function(
            """(before) => {
                const cards = [...document.querySelectorAll('[data-testid="stMetric"]')];
                const c = cards.find(e => e.innerText.includes('Stored size'));
                return c && !c.innerText.includes(before) && !document.querySelector('[data-testid="stSpinner"]');
            }""", arg=size_before, timeout=90_000)
        page.wait_for_timeout(1500)
        size_after = _metric(page, "Stored size")
        points_after = page.locator(".js-plotly-plot .scatterlayer .point").count()
        page.screenshot(path=str(ARTIFACTS / "dashboard-explore-after.png"), full_page=True)
        browser.close()
    assert size_after != size_before
    assert points_after > points_before  # the new configuration joined the plot
