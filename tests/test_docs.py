"""The documentation holds together: links resolve, papers are named, README stays short.

* No tracked text file calls the two papers by the source-text numbering ("seed"
  followed by their three-digit numbers): users know them by title.
* The design authority is docs/design.md: nothing cites another design file, and every
  equation label the code, tests, tools and configs cite (``eq. D4``, ``eqs. S1-S2``) is
  defined there.
* README.md is the front door: at most 260 lines, and its index links every docs page.
* Every relative link of README.md and docs/*.md points at a file that exists, and a
  ``#fragment`` at a heading of that file.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
README_MAX_LINES = 260

# Built from parts so this file does not match itself.
_NUM = "0" * 2 + "[01]"
JARGON = re.compile(r"\bseeds?(?:[ /_-]|\s+)" + _NUM + r"(?!\d)", re.IGNORECASE)
OTHER_DESIGN = re.compile(r"(?<![\w/])" + "DESIGN" + r"\.md")
LABEL = re.compile(r"\beqs?\.\s+([A-Z]\d+'?)(?:\s*-\s*([A-Z]\d+'?))?")
_SKIP_DIRS = {".git", ".venv", ".venv-ci", "runs", "build", "dist", "__pycache__", ".ruff_cache"}
_BINARY_EXT = (".png", ".jpg", ".jpeg", ".gif", ".npz", ".npy", ".mp4", ".pyc", ".whl")


def _tracked_files() -> list[str]:
    """Tracked files (``git ls-files``), or every file outside build folders without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode()
        files = [f for f in out.split("\0") if f]
        if files:
            return files
    except (OSError, subprocess.SubprocessError):
        pass
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        files += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames]
    return files


def _text(rel: str) -> str | None:
    if rel.lower().endswith(_BINARY_EXT):
        return None
    path = os.path.join(ROOT, rel)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def _docs_pages() -> list[str]:
    return sorted(f for f in os.listdir(DOCS) if f.endswith(".md"))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"[`*]", "", heading.strip().lower())
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    body = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", body, flags=re.M)}


def test_papers_are_named_not_numbered():
    bad = []
    for rel in _tracked_files():
        text = _text(rel)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if JARGON.search(line):
                bad.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not bad, "name the paper by its title instead of:\n" + "\n".join(bad)


def test_only_docs_design_md_is_cited():
    bad = []
    for rel in _tracked_files():
        text = _text(rel)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OTHER_DESIGN.search(line):
                bad.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not bad, "cite docs/design.md, the project's design authority:\n" + "\n".join(bad)


def test_cited_equation_labels_are_defined_in_design_md():
    design = _read(os.path.join(DOCS, "design.md"))
    defined = set(re.findall(r"\*\*Eq\. ([A-Z]\d+'?)[,*]", design))
    assert defined, "docs/design.md defines no labelled equation (**Eq. X1, ...**)"
    missing = []
    for rel in _tracked_files():
        top = rel.split("/")[0]
        if not rel.endswith(".py") or top not in {"vkd_jax", "tests", "tools", "configs"}:
            continue
        text = _text(rel) or ""
        for m in LABEL.finditer(text):
            for label in filter(None, m.groups()):
                if label not in defined:
                    line = text.count("\n", 0, m.start()) + 1
                    missing.append(f"{rel}:{line}: eq. {label}")
    assert not missing, "these labels are cited but not defined in docs/design.md:\n" + "\n".join(
        missing
    )


def test_readme_is_a_front_door():
    lines = _read(os.path.join(ROOT, "README.md")).splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move details to docs/"
    )


def test_readme_indexes_every_docs_page():
    readme = _read(os.path.join(ROOT, "README.md"))
    missing = [p for p in _docs_pages() if f"(docs/{p})" not in readme]
    assert not missing, f"README.md's documentation index does not link {missing}"


@pytest.mark.parametrize("page", ["README.md"] + [f"docs/{p}" for p in _docs_pages()])
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", _read(os.path.join(ROOT, page)), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)  # Inline code is not a link.
    broken = []
    for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, mailto:, ...
            continue
        path, _, fragment = target.partition("#")
        resolved = (
            os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path))
            if path
            else (os.path.join(ROOT, page))
        )
        if not os.path.exists(resolved):
            broken.append(f"{target}: no such file")
        elif fragment and resolved.endswith(".md") and fragment not in _anchors(_read(resolved)):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page}: broken links:\n" + "\n".join(broken)
