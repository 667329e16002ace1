"""The app's pages, in menu order: read by app.py to build its navigation and by the tests to cover every page.

Plain data (no Streamlit, no torch), so a test can import it without running the app."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageEntry:
    key: str
    path: str  # relative to dashboard/, as st.Page and AppTest.switch_page take it
    title: str
    default: bool = False


PAGES: tuple[PageEntry, ...] = (
    PageEntry("explore", "app_pages/explore.py", "Explore", default=True),
    PageEntry("frontier", "app_pages/frontier.py", "Frontier"),
    PageEntry("sweep", "app_pages/sweep.py", "Sweep"),
    PageEntry("search", "app_pages/search.py", "Search"),
    PageEntry("learn", "app_pages/learn.py", "Learn"),
    PageEntry("export", "app_pages/export.py", "Export"),
    PageEntry("workshop", "app_pages/workshop.py", "Workshop"),
)
