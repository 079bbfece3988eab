"""The student edition (tools/make_exercises.py): stubs that fail where they should, solutions
that go back in exactly, no solution code left in the stubs, and wrong code caught by the
chapters' own checks."""
import os
import re

import nbformat
import pytest

from _support import ROOT  # noqa: F401  (puts tools/ on the path)

import make_exercises as mx
from chapters import BOOK, code_cells, notebook_chapters, kernel_environment, read_chapter

CHAPTERS = notebook_chapters()


def _ids(paths):
    return [p.stem for p in paths]


def execute(nb, timeout=600):
    """Run nb in a python3 kernel with the chapters' environment, in book/; returns the error
    (ename, evalue, traceback text, index of the failing code cell) or None."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    saved = os.environ.copy()
    os.environ.update(kernel_environment())
    try:
        NotebookClient(nb, kernel_name="python3", timeout=timeout,
                       resources={"metadata": {"path": str(BOOK)}}).execute()
    except CellExecutionError:
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    text = "\n".join(out.traceback)
                    return out.ename, out.evalue, re.sub(r"\x1b\[[0-9;]*m", "", text), i
        raise
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return None


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_solutions_go_back_exactly(path):
    student, _ = mx.student_edition(path)
    restored = mx.restore(student, read_chapter(path))
    assert [c.source for c in code_cells(restored)] == [c.source for c in
                                                        code_cells(read_chapter(path))]


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_no_solution_code_in_the_stubs(path):
    """No line of a solution body is left in the student's cell (lines that the cell also has
    outside its exercise bodies, like a shared `N = x.shape[0]`, do not count)."""
    chapter_cells = code_cells(read_chapter(path))
    student, _ = mx.student_edition(path)
    student_cells = [c for c in code_cells(student) if c.source != mx.SETUP]
    leaks = []
    for original, stub in zip(chapter_cells, student_cells):
        regions = mx.solution_regions(original.source) if mx.STUB_TAG in stub.metadata.get(
            "tags", []) else []
        lines = original.source.splitlines()
        inside = {i for _, first, last, _ in regions for i in range(first - 1, last)}
        outside = {lines[i].strip() for i in range(len(lines)) if i not in inside}
        stub_lines = {s.strip() for s in stub.source.splitlines()}
        for i in sorted(inside):
            text = lines[i].strip()
            if len(text) > 12 and text not in outside and text in stub_lines:
                leaks.append(text)
    assert not leaks, leaks


def test_every_exported_chapter_has_exercises():
    counts = {p.stem: len(mx.student_edition(p)[1]) for p in CHAPTERS}
    assert sum(counts.values()) > 100
    assert counts["fc_layers"] >= 4 and counts["convolution"] >= 2
    assert {name for name, n in counts.items() if n == 0} == {"preface", "cifar10", "grading"}


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_student_edition_stops_at_its_first_stub(path):
    student, exercises = mx.student_edition(path)
    error = execute(student)
    if not exercises:
        assert error is None, error
        return
    assert error is not None, "the student edition ran to the end"
    ename, evalue, _, cell = error
    names = [name for name, _ in exercises]
    assert ename == "NotImplementedError", (ename, evalue)
    assert any(evalue.startswith(f"{name}: exercise") for name in names), evalue


WRONG = {  # chapter: (function, correct line, wrong line, what the traceback must show)
    "fc_layers": ("affine_backward", "    dw = x.reshape(N, D).T @ dout",
                  "    dw = dout.T @ x.reshape(N, D)", "dw"),
    "convolution": ("conv_backward_naive",
                    "    return dx_pad[:, :, P:P + H, P:P + W], dw_rows.reshape(w.shape), db",
                    "    return dx_pad[:, :, :H, :W], dw_rows.reshape(w.shape), db",
                    "conv_backward_naive dx relative error"),
}


@pytest.mark.parametrize("chapter", sorted(WRONG))
def test_a_wrong_implementation_is_caught_by_the_chapter(chapter):
    """A student's wrong function, with every other exercise solved: the chapter's check fails
    with an AssertionError, and what it printed points at the wrong gradient."""
    path = BOOK / f"{chapter}.md"
    function, right, wrong, shown = WRONG[chapter]
    student, _ = mx.student_edition(path)
    nb = mx.restore(student, read_chapter(path))
    cells = code_cells(nb)
    target = next(c for c in cells if f"def {function}(" in c.source)
    assert right in target.source
    target.source = target.source.replace(right, wrong)
    error = execute(nb)
    assert error is not None, f"the chapter did not notice the wrong {function}"
    ename, evalue, traceback, index = error
    assert ename == "AssertionError", (ename, evalue)
    assert function in evalue, f"the AssertionError does not name {function}: {evalue!r}"
    printed = "".join(o.get("text", "") for o in nbformat.from_dict(cells[index]).get(
        "outputs", []) if o.output_type == "stream")
    assert shown in traceback + printed, (traceback, printed)
