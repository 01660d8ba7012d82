"""README links every document in docs/ (a new doc that nobody can find is a defect)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_links_every_doc() -> None:
    links = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", (REPO / "README.md").read_text()))
    docs = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert docs - links == set(), f"not linked from README: {sorted(docs - links)}"


def test_readme_plot_is_committed() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (REPO / "README.md").read_text())
    assert "docs/img/bench-compare.png" in images
    assert all((REPO / image).is_file() for image in images), images
