"""The workshop in a real browser, as a class would use it, at 1400 and 800 px: every preset loaded, every
answer revealed, A pinned and B compared, results exported and imported again; a screenshot of every page in
artifacts/. Checked on every page: no metric value cut, no exception, no request to any host but the dashboard."""
from __future__ import annotations

from urllib.parse import urlparse

import pytest

from dashboard import lessons
from tests.test_e2e_browser import ARTIFACTS, launch, pytestmark, server  # noqa: F401  (fixture)

WAIT = 180_000
SETTLED = """() => !document.querySelector('[data-testid="stSpinner"]')
    && ![...document.querySelectorAll('[data-testid="stExpander"] summary')].some(s => s.innerText.startsWith('Measuring'))
    && document.querySelector('[data-testid="stApp"]')?.getAttribute('data-test-script-state') !== 'running'"""


def settle(page) -> None:
    page.wait_for_timeout(400)
    page.wait_for_function(SETTLED, timeout=WAIT)


def check(page, name: str, width: int) -> None:
    """Nothing cut, nothing crashed; a screenshot for the record."""
    settle(page)
    cut = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stMetricValue"], [data-testid="stMetricLabel"]')]
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)""")
    assert not cut, f"{name} at {width}px: truncated {cut}"
    assert page.locator('[data-testid="stException"]').count() == 0, f"{name} at {width}px shows an exception"
    page.screenshot(path=str(ARTIFACTS / f"workshop-{width}-{name}.png"), full_page=True)


def open_sidebar(page) -> None:
    """A collapsed sidebar keeps its links in the page, off-screen: open it with its `>` button."""
    button = page.locator('[data-testid="stExpandSidebarButton"]')
    if button.count() and button.is_visible():
        button.click()
        page.locator('[data-testid="stSidebarNavLink"]').first.wait_for(state="visible")
        page.wait_for_timeout(500)  # the slide-in animation


def to_workshop(page) -> None:
    link = page.get_by_role("link", name="← Back to the workshop")
    if link.count():
        link.first.click()
    else:
        open_sidebar(page)
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Workshop").click()
    page.wait_for_selector('h1:has-text("Workshop")', timeout=WAIT)
    settle(page)


def exercise(page, ex: lessons.Exercise):
    box = page.locator('[data-testid="stExpander"]', has_text=ex.title).first
    if not box.get_by_text("Goal.").is_visible():
        box.locator("summary").click()
        box.get_by_text("Goal.").wait_for(state="visible")
    return box


@pytest.mark.parametrize("width", [1400, 800])
def test_a_class_walks_the_lesson_path(server, width, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": width, "height": 900}, accept_downloads=True)
        hosts = set()
        page.on("request", lambda req: hosts.add(urlparse(req.url).hostname))
        page.goto(url)
        page.wait_for_selector('[data-testid="stMetric"]', timeout=WAIT)
        check(page, "explore", width)
        sidebar = page.locator('[data-testid="stSidebar"]').bounding_box()
        assert (sidebar is None or sidebar["width"] < 100) == (width < 1000), sidebar  # collapsed on a laptop window

        to_workshop(page)
        check(page, "workshop", width)
        for ex in lessons.EXERCISES:
            for preset in ex.presets:
                exercise(page, ex).get_by_role("button", name=f"Load preset: {preset.label}", exact=True).click()
                page.wait_for_selector("h1", timeout=WAIT)
                settle(page)
                assert page.locator('[data-testid="stException"]').count() == 0, preset.label
                to_workshop(page)
            answered = """(title) => [...document.querySelectorAll('[data-testid="stExpander"]')]
                .some(e => e.innerText.includes(title) && e.querySelector('[data-testid="stAlertContentSuccess"]'))"""
            reveal = exercise(page, ex).get_by_role("button", name="Reveal the answer")
            reveal.click()
            page.wait_for_timeout(5000)
            if reveal.count() and page.evaluate(SETTLED):  # the page is idle and still asks: the click was dropped
                reveal.click()  # (Streamlit drops a click that lands while it redraws the element)
            page.wait_for_function(answered, arg=ex.title, timeout=WAIT)
            exercise(page, ex).get_by_text("Done", exact=True).click()
            settle(page)
        assert f"{len(lessons.EXERCISES)} of {len(lessons.EXERCISES)} exercises done" in page.inner_text("body")
        check(page, "workshop-answers", width)

        # Pin A (the 8-bit preset), then B = 2 bits: compared side by side, and overlaid on Learn.
        exercise(page, lessons.EXERCISES[3]).get_by_role("button", name="Load preset: 8 bits").click()
        page.wait_for_selector('h1:has-text("Learn")', timeout=WAIT)
        open_sidebar(page)
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Explore").click()
        page.wait_for_selector('[data-testid="stMetric"]', timeout=WAIT)
        settle(page)
        page.get_by_role("button", name="Pin as A").click()
        settle(page)
        to_workshop(page)
        exercise(page, lessons.EXERCISES[3]).get_by_role("button", name="Load preset: 2 bits").click()
        page.wait_for_selector('h1:has-text("Learn")', timeout=WAIT)
        settle(page)
        assert "A (pinned)" in page.inner_text("body") or page.locator("text=A (pinned)").count()
        check(page, "learn-compare", width)
        open_sidebar(page)
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Explore").click()
        page.wait_for_selector('text=Compare: A (pinned)', timeout=WAIT)
        check(page, "explore-compare", width)
        for name in ("Frontier", "Sweep", "Export"):
            open_sidebar(page)
            page.locator('[data-testid="stSidebarNavLink"]', has_text=name).click()
            page.wait_for_selector("h1", timeout=WAIT)
            check(page, name.lower(), width)

        # Export my results, then import the file again: nothing is duplicated.
        to_workshop(page)
        with page.expect_download() as download:
            page.get_by_role("button", name="Export my results").click()
        saved = tmp_path / "my-results.json"
        download.value.save_as(saved)
        page.get_by_test_id("stMainBlockContainer").locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(saved))
        page.wait_for_selector("text=rows read", timeout=WAIT)
        assert " 0 new" in page.inner_text("body")
        check(page, "workshop-imported", width)
        browser.close()
    assert hosts <= {"localhost", "127.0.0.1", None}, hosts
