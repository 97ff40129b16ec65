"""The documentation in docs/ matches the tree: the module map lists every module, and every
"docs/NAME.md §N" a comment cites is a section that exists."""

from __future__ import annotations

import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCE_DIRS = ("udm_fast", "csrc", "kernels", "configs", "tests", "bench")
SOURCE_SUFFIXES = {".py", ".h", ".cpp", ".cc", ".cu", ".yaml", ".md"}


def _module_map_paths() -> list[str]:
    """First-column paths of the table between the module-map markers of docs/architecture.md."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- module-map -->\n(.*?)<!-- /module-map -->", text, re.S)
    assert match, "docs/architecture.md has no <!-- module-map --> table"
    return re.findall(r"^\| `([^`]+)` \|", match.group(1), re.M)


def _package_entries() -> set[str]:
    """Every Python module of udm_fast/ and every subpackage folder holding one (symlinks not followed)."""
    entries = set()
    for folder, dirs, files in os.walk(ROOT / "udm_fast"):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = pathlib.Path(folder).relative_to(ROOT).as_posix()
        modules = [f for f in files if f.endswith(".py")]
        entries.update(f"{rel}/{f}" for f in modules)
        if modules and rel != "udm_fast":
            entries.add(rel + "/")
    return entries


def test_module_map_lists_every_module_and_nothing_else():
    listed = _module_map_paths()
    assert len(listed) == len(set(listed)), "a path is listed twice in the module map"
    actual = _package_entries()
    missing = sorted(actual - set(listed))
    stale = sorted(set(listed) - actual)
    assert not missing, f"docs/architecture.md §15 does not list: {missing}"
    assert not stale, f"docs/architecture.md §15 lists paths that do not exist: {stale}"


def _section_numbers(doc: pathlib.Path) -> set[str]:
    return set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", doc.read_text(encoding="utf-8"), re.M))


def _source_files():
    for name in SOURCE_DIRS:
        for path in (ROOT / name).rglob("*"):
            if path.suffix in SOURCE_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                yield path
    yield ROOT / "setup.py"
    yield ROOT / "README.md"


CITATION = re.compile(r"docs/(\w+)\.md((?:,? ?§\d+(?:\.\d+)*(?:-§?\d+(?:\.\d+)*)?)+)")


def test_every_cited_section_exists():
    sections = {doc.stem: _section_numbers(doc) for doc in DOCS.glob("*.md")}
    assert {"architecture", "kernels", "bitstream"} <= set(sections)
    cited = 0
    for path in _source_files():
        for match in CITATION.finditer(path.read_text(encoding="utf-8", errors="replace")):
            doc = match.group(1)
            assert doc in sections, f"{path.relative_to(ROOT)} cites docs/{doc}.md, which does not exist"
            for number in re.findall(r"\d+(?:\.\d+)*", match.group(2)):
                cited += 1
                assert number in sections[doc], (
                    f"{path.relative_to(ROOT)} cites docs/{doc}.md §{number}, which has no such section"
                )
    assert cited > 0, "no source file cites docs/*.md (the pattern no longer matches the citations)"


OUTSIDE_CITATION = re.compile(r"REFERENCE §|shared notes|shared/notes/|\(issue \d+\)|report §\d")


def test_comments_cite_no_document_outside_the_repository():
    offenders = []
    for path in _source_files():
        if path == pathlib.Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE_CITATION.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "cite docs/*.md instead:\n" + "\n".join(offenders)


def test_files_the_docs_name_exist():
    """Every `dir/file.ext` a doc names is a file of the tree (paths inside the package may omit udm_fast/)."""
    named = 0
    for doc in DOCS.glob("*.md"):
        for path in re.findall(r"`((?:[\w.]+/)+[\w.]+\.(?:py|h|cpp|cc|cu|md|yaml))`", doc.read_text(encoding="utf-8")):
            named += 1
            assert (ROOT / path).is_file() or (ROOT / "udm_fast" / path).is_file(), f"docs/{doc.name} names {path}"
    assert named > 0
