"""Every relative link in the project's Markdown resolves: the file or folder exists, and a `#anchor`
into a Markdown file names one of its headings (GitHub's slugs). Documents move text between each
other; a link left pointing at the old place is caught here rather than by a reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT as ROOT

DOCUMENTS = sorted(
    path
    for pattern in ("*.md", "docs/**/*.md", "benchmarks/**/*.md", "mdlm_fast/assets/**/*.md")
    for path in ROOT.glob(pattern)
)

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked (neither holds links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            if count:
                seen[f"{base}-{count}"] = 1  # GitHub numbers repeated headings
    return set(seen)


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` that does not resolve, with the reason."""
    problems = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{target}: no heading with anchor #{anchor}")
    return problems


def test_the_documents_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "CONTRIBUTING.md", "docs/usage.md", "benchmarks/README.md"} <= names


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_the_check_reports_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Its `second` part: details\n")
    (tmp_path / "page.md").write_text(
        "# Page\n\n## A part\n\n"
        "[ok](other.md#its-second-part-details) [ok](#a-part) [web](https://example.org/x.md)\n"
        "[gone](missing.md) [bad anchor](other.md#third-part) [self](#no-such-part)\n"
        "`[in code](missing-too.md)`\n\n```\n[fenced](missing-three.md)\n```\n"
    )
    assert broken_links(tmp_path / "page.md") == [
        "missing.md: no such file",
        "other.md#third-part: no heading with anchor #third-part",
        "#no-such-part: no heading with anchor #no-such-part",
    ]


def test_repeated_headings_get_numbered_anchors(tmp_path):
    (tmp_path / "page.md").write_text("# Notes\n\n## Notes\n\n[second](#notes-1) [third](#notes-2)\n")
    assert broken_links(tmp_path / "page.md") == ["#notes-2: no heading with anchor #notes-2"]
