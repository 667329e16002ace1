"""The docs keep up with the code: every package is placed in docs/architecture.md, every page and registered
name is described, the README stays a front page (≤ 8 KB), and every relative link in the README and docs/
points at a file (and heading) that exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
ARCHITECTURE = ROOT / "docs" / "architecture.md"
# [text](target) and ![alt](target); the alt text may span lines. Targets with a scheme (https:, mailto:) or
# only an anchor are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _packages() -> list[str]:
    """Every folder with an __init__.py under engine/ and dashboard/, as `engine/jobs/`."""
    inits = sorted(ROOT.glob("engine/**/__init__.py")) + sorted(ROOT.glob("dashboard/**/__init__.py"))
    return [f"{init.parent.relative_to(ROOT).as_posix()}/" for init in inits if init.parent != ROOT / "engine"]


def _top_level_modules() -> list[str]:
    return [f"engine/{f.name}" for f in sorted((ROOT / "engine").glob("*.py"))]


def test_architecture_names_every_package_and_top_level_module():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [name for name in _packages() + _top_level_modules() if name not in text]
    assert not missing, f"docs/architecture.md does not name {missing}: add a line saying what lives there"


def test_the_readme_is_a_front_page():
    size = len((ROOT / "README.md").read_bytes())
    assert size < 8000, f"README.md is {size} bytes (limit 8000): move the detail into a page under docs/"


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(path.read_text(encoding="utf-8"))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file(page):
    broken = []
    for target in _links(page):
        file, _, anchor = target.partition("#")
        path = page.parent / file
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files or headings: {broken}"


def test_the_readme_leads_to_every_page():
    linked = {(ROOT / t.split("#")[0]).resolve() for t in _links(ROOT / "README.md")}
    assert {p.name for p in DOCS} >= {"dashboard.md", "cli.md", "measurement.md", "recipes-and-bundles.md",
                                      "own-models.md", "cluster.md", "security.md", "architecture.md", "extending.md"}
    unlinked = [p.name for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"README.md's 'Where to go next' does not link {unlinked}"


def test_every_page_of_the_app_is_described():
    from dashboard.pages import PAGES

    text = (ROOT / "docs" / "dashboard.md").read_text(encoding="utf-8")
    missing = [p.title for p in PAGES if f"**{p.title}**" not in text]
    assert not missing, f"docs/dashboard.md's Pages list does not describe {missing}"


def test_every_registered_name_is_documented():
    """A new runtime, technique or task says in the docs how it runs (measurement) and how to ask for it."""
    from engine.core.axes import PRUNE_METHODS, RUNTIMES, SCHEMES, TASKS

    prune_methods = [m for m, e in PRUNE_METHODS.items() if e.prunes]
    where = {"measurement.md": RUNTIMES.names(), "cli.md": (*RUNTIMES.names(), *SCHEMES.names(), *prune_methods),
             "own-models.md": TASKS.names()}
    missing = []
    for page, names in where.items():
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        missing += [f"{n} in docs/{page}" for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]
    assert not missing, f"registered but not documented: {missing}"
