"""The manual: README.md and docs/*.md link to files (and headings) that
exist, every doc is reachable from the README, and the README's copy of
the example configuration is the example's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MANUAL = [README, *DOCS]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)


def prose(text: str) -> str:
    """The text without code blocks and code spans."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text()))


def slug(heading: str) -> str:
    """A heading's anchor, as GitHub makes it."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)


def test_slug() -> None:
    assert slug("How it decides") == "how-it-decides"
    assert slug("`DOCKER_REPOSITORY`") == "docker_repository"
    assert slug("Differences from the reference tool") == (
        "differences-from-the-reference-tool"
    )
    assert slug("Speed: look-ups, fast") == "speed-look-ups-fast"


def test_links_are_found() -> None:
    text = "[a](x.md) `[b](no.md)` [c\n d](y.md#z)\n```\n[e](no.md)\n```\n"
    assert LINK.findall(prose(text)) == ["x.md", "y.md#z"]


@pytest.mark.parametrize("path", MANUAL, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link names an existing file, and its #anchor (if
    any) a heading of that file."""
    broken = []
    for target in links(path):
        if not relative(target):
            continue
        name, _, anchor = target.partition("#")
        file = (path.parent / name).resolve() if name else path
        if not file.exists() or (
            anchor and (file.suffix != ".md" or anchor not in anchors(file))
        ):
            broken.append(target)
    assert broken == []


def test_every_doc_is_linked_from_the_readme() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in links(README)
        if relative(target) and target.partition("#")[0]
    }
    assert DOCS
    assert [doc.name for doc in DOCS if doc.resolve() not in linked] == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_starts_by_saying_what_it_holds(path: Path) -> None:
    """A title, then one line that says what the file holds."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ")
    assert lines[1] == "" and lines[2].strip() and lines[3] == ""


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 400


def test_readme_shows_the_example_configuration() -> None:
    readme = README.read_text()
    block = readme.split("<!-- example-config -->\n```\n", 1)[1].split("```\n", 1)[0]
    assert block == (ROOT / "example" / "docker_images").read_text()
