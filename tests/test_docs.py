"""The documentation holds together: README.md stays short, its first code block gives the test command CI
runs, and every relative link in README.md, CONTRIBUTING.md and docs/*.md reaches a file and a heading."""

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12 * 1024

FENCE = re.compile(r"^ {0,3}(?:[-*+] |\d+[.)] )?\s*(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
CODE_SPAN = re.compile(r"(`+)(?!`)([\s\S]*?[^`])\1(?!`)")
# [text](target) or ![alt](target), the text holding at most one level of brackets; an optional "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_files() -> list[Path]:
    files = [README, *sorted(DOCS.glob("*.md"))]
    contributing = ROOT / "CONTRIBUTING.md"
    if contributing.exists():
        files.append(contributing)
    return files


def prose_lines(text: str) -> list[str]:
    """The file's lines with those of fenced code blocks (fences included) blanked, so that line numbers stay."""
    lines, fence = [], None
    for line in text.split("\n"):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            lines.append("")
        elif fence is not None:
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return lines


def code_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block, in order."""
    blocks, current, fence = [], None, None
    for line in text.split("\n"):
        match = FENCE.match(line)
        if fence is None and match:
            fence, current = match.group(1), []
        elif fence is not None:
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                blocks.append(current)
                fence = current = None
            else:
                current.append(line)
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without markup, lowercased, punctuation (not hyphens or
    underscores) dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char in "-_ " or category[0] in "LN" or category == "Mn":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link outside code blocks and code spans."""
    text = "\n".join(prose_lines(path.read_text(encoding="utf-8")))
    # A code span is no link: blank it, keeping its newlines so that line numbers stay.
    text = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK.finditer(text)]


def broken_links(path: Path, anchor_cache: dict) -> list[str]:
    problems = []
    for line, target in links(path):
        where = f"{path.relative_to(ROOT)}:{line}: ({target})"
        if not target:
            problems.append(f"{where} empty link target")
            continue
        if SCHEME.match(target):  # http(s)://, mailto:, ...: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part)
        if file_part.startswith("/"):
            linked = (ROOT / file_part.lstrip("/")).resolve()
        elif file_part:
            linked = (path.parent / file_part).resolve()
        else:
            linked = path
        if not linked.exists():
            problems.append(
                f"{where} no such file: {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}"
            )
            continue
        if anchor and linked.suffix == ".md":
            if linked not in anchor_cache:
                anchor_cache[linked] = anchors(linked)
            if unquote(anchor).lower() not in anchor_cache[linked]:
                problems.append(
                    f"{where} no heading with anchor #{anchor} in {linked.relative_to(ROOT)} "
                    f"(its anchors: {', '.join(sorted(anchor_cache[linked]))})"
                )
    return problems


def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move the detail into a page under docs/ and link it"
    )


def test_every_relative_link_resolves():
    cache: dict = {}
    problems = [problem for path in markdown_files() for problem in broken_links(path, cache)]
    assert not problems, f"{len(problems)} broken link(s):\n" + "\n".join(problems)


def test_readme_first_code_block_gives_the_test_command():
    blocks = code_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no fenced code block: its first one must give the set-up and test commands"
    first = blocks[0]
    pytest_lines = [line for line in first if "pytest" in line]
    assert len(pytest_lines) == 1, (
        "README.md's first code block must have exactly one line with 'pytest' (the test command CI runs); "
        f"it has {len(pytest_lines)}: {pytest_lines}"
    )
    command = re.split(r"\s#", pytest_lines[0], maxsplit=1)[0]
    assert "python -m pytest -q" in command, (
        f"README.md's test command should run 'python -m pytest -q'; the line is: {pytest_lines[0]!r}"
    )


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_page_has_a_title_and_links_back(page):
    path = DOCS / page
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("# "), f"docs/{page} must start with a '# Title' line, not {lines[0]!r}"
    targets = [target for _, target in links(path)]
    assert "../README.md" in targets, f"docs/{page} must link back to ../README.md"


def test_docs_index_lists_every_page():
    index = DOCS / "README.md"
    listed = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(index)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p != index and p.resolve() not in listed]
    assert not missing, f"docs/README.md (the index) does not link to: {', '.join(missing)}"


DOC_POINTER = re.compile(r"docs/[\w.-]+\.md(?:#[\w-]+)?")


def test_docs_pointers_in_code_resolve():
    """Help texts and messages that name a docs page (docs/usage.md#anchor) name one that exists."""
    cache: dict = {}
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if path == Path(__file__).resolve() or any(
            part.startswith(".") or part.endswith(".egg-info") or part in ("build", "venv") for part in relative.parts
        ):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in DOC_POINTER.finditer(text):
            page, _, anchor = match.group(0).partition("#")
            linked = ROOT / page
            line = text.count("\n", 0, match.start()) + 1
            if not linked.exists():
                problems.append(f"{relative}:{line}: {match.group(0)}: no such page")
            elif anchor:
                if linked not in cache:
                    cache[linked] = anchors(linked)
                if anchor.lower() not in cache[linked]:
                    problems.append(
                        f"{relative}:{line}: {match.group(0)}: no such heading (anchors: {', '.join(sorted(cache[linked]))})"
                    )
    assert not problems, "docs pointers in the code that do not resolve:\n" + "\n".join(problems)
