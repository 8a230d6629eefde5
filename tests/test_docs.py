"""The documents a user who clones the repo reads: every link they hold resolves inside the
repo, and none points at what a clone does not have (the project's own tracker, files
outside the repo)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(
    p
    for p in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/*.md")]
    if p.is_file()
)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_docs_are_in_the_repo():
    assert (ROOT / "docs" / "api.md").is_file()
    assert (ROOT / "docs" / "interface.md").is_file()
    readme = (ROOT / "README.md").read_text()
    assert "docs/api.md" in readme and "docs/interface.md" in readme


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_and_point_inside_the_repo(document: Path):
    text = document.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        path = (document.parent / target).resolve()
        assert path.exists(), f"{document.name}: {target} does not exist"
        assert ROOT in path.parents or path == ROOT, f"{document.name}: {target} is outside"
    assert "../shared" not in text
    assert not re.search(r"\bissues? #?\d", text, re.IGNORECASE), document.name
