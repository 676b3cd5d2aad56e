"""The repository stands on its own: its docs exist, its links resolve, and nothing it ships
or tests refers to a design or style document outside it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT = (".py", ".pyx", ".pxd", ".pyi", ".md", ".toml", ".txt", ".cfg", ".html", ".j2")
SOURCES = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "setup.py", ROOT / ".ci" / "run",
           ROOT / ".ci" / "wheel-check"] + [
    p for top in ("cpbench", "docs", "tests", "tools", "traces")
    for p in sorted((ROOT / top).rglob("*")) if p.is_file() and p.suffix in TEXT]
# A reference to a document kept outside the repository: the old DESIGN/STYLE names, or a path
# that climbs out of the checkout into a shared folder.
OUTSIDE = re.compile(r"\.\./shared|/work/shared|\bshared/(DESIGN|STYLE)|\bDESIGN\.md|\bSTYLE\.md|"
                     r"\bDESIGN \"|\b(DESIGN|STYLE) documents?\b")


def test_design_and_style_documents_are_in_the_repository():
    for name in ("design.md", "style.md", "formats.md"):
        assert (ROOT / "docs" / name).stat().st_size > 1000, name


def test_nothing_refers_to_documents_outside_the_repository():
    me = Path(__file__).resolve()
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in SOURCES if p.resolve() != me
            for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace")
                                     .splitlines(), 1) if OUTSIDE.search(line)]
    assert hits == []


@pytest.mark.parametrize("doc", ["README.md", "docs/design.md", "docs/style.md",
                                 "docs/formats.md", "traces/README.md"])
def test_relative_links_resolve(doc):
    path = ROOT / doc
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    missing = [link for link in local if not (path.parent / link).exists()]
    assert missing == []
