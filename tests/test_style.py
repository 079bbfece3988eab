"""The mechanical conventions of CONTRIBUTING.md, checked on every chapter of the book.

- no code cell over 80 lines (a reader sees each algorithm in one screen);
- no code line over 100 characters (the page width of the HTML book);
- only the cell tags the book knows, one export tag at most.
"""
import re

import pytest

from _support import ROOT

from chapters import chapters, code_cell_lines, code_cells, read_chapter, rel
from tangle import exported_module

MAX_CELL_LINES = 80
MAX_LINE = 100
KNOWN_TAGS = {"data-dependent", "machine-dependent", "hide-input", "hide-output", "nbval-ignore-output",
              "raises-exception", "remove-input", "remove-output"}

CHAPTERS = chapters(ROOT / "_toc.yml")


@pytest.fixture(scope="module", params=CHAPTERS, ids=lambda p: rel(p))
def chapter(request):
    nb = read_chapter(request.param)
    return request.param, code_cells(nb), code_cell_lines(request.param, nb)


def test_code_cells_fit_one_screen(chapter):
    path, cells, lines = chapter
    long = [f"{rel(path)}:{line}: {len(c.source.splitlines())} lines"
            for c, line in zip(cells, lines) if len(c.source.splitlines()) > MAX_CELL_LINES]
    assert not long, f"code cells over {MAX_CELL_LINES} lines:\n" + "\n".join(long)


def test_code_lines_fit_the_page(chapter):
    path, cells, lines = chapter
    wide = [f"{rel(path)}:{line + i}: {len(text)} characters"
            for c, line in zip(cells, lines)
            for i, text in enumerate(c.source.splitlines()) if len(text) > MAX_LINE]
    assert not wide, f"code lines over {MAX_LINE} characters:\n" + "\n".join(wide)


def test_cell_tags_are_known(chapter):
    path, cells, lines = chapter
    bad = []
    for c, line in zip(cells, lines):
        tags = c.metadata.get("tags", [])
        unknown = [t for t in tags if t not in KNOWN_TAGS and not exported_module(t)]
        if unknown:
            bad.append(f"{rel(path)}:{line}: unknown tags {unknown}")
    assert not bad, "\n".join(bad) + f"\n(known: {sorted(KNOWN_TAGS)} and export:cnnbook.MODULE)"


def test_data_dependent_cells_are_not_also_ignored(chapter):
    path, cells, lines = chapter
    both = [f"{rel(path)}:{line}" for c, line in zip(cells, lines)
            if {"data-dependent", "nbval-ignore-output"} <= set(c.metadata.get("tags", []))]
    assert not both, "a cell is either data-dependent or nbval-ignore-output: " + ", ".join(both)


def test_contributing_lists_the_known_tags():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    for tag in ("export:cnnbook.MODULE", "data-dependent", "hide-input", "nbval-ignore-output"):
        assert re.search(rf"`{re.escape(tag)}`", text), tag
