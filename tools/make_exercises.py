"""The student edition of the chapters: every exercise replaced by a stub.

    python tools/make_exercises.py [book/NAME.md ...] [--out _build/exercises] [--solutions]

writes ``OUT/NAME.md`` (MyST, like the chapter) and ``OUT/NAME.ipynb`` for every chapter of the
table of contents (or the chapters given).

**The convention: an exercise is the body of a public function.** In a cell tagged
``export:cnnbook.MODULE`` (``tools/tangle.py``), the body of every top-level function and of every
method of a top-level class whose name does not start with an underscore (``__init__`` included),
and of every function added to a class with ``@add_to_class``, is a solution region: the student
edition keeps its decorators, signature and docstring and replaces the statements after the
docstring by ``raise NotImplementedError(...)`` naming the function, the chapter and the section.
What stays as written: private helpers (``_check_...``: the shape checks that belong to the API,
and other plumbing), constants, imports, the prose, the maths, the plots, and every cell that is
not exported (the chapter's checks, which grade the student's code). Modules in ``GIVEN_MODULES``
(the package's ``__init__``, plotting, utilities, the dataset loader) are plumbing, not
exercises: they stay whole, and the package keeps its own definitions of them.

**The student's code is the code that runs.** A cell at the top of each student edition defines
``use_my_code``; every exported cell ends with a call to it, which puts the cell's definitions
into the package module they belong to. Later cells that import them from ``cnnbook`` (``from
cnnbook.layers import affine_forward``), or that call a package function which uses them, get the
student's versions, not the installed package's. The last cell (tag ``grade``) of a student
edition with exercises runs ``python -m cnnbook.grade`` on the notebook itself (the chapter
"Grading the exercises", ``book/grading.md``): a table of the exercises, passed or not.

``--solutions`` writes the chapters back from their student editions, with the solutions taken
from the chapters (``restore``, which drops the cells the student edition added, SETUP and the
grader): the round trip gives the chapter's code cells back exactly, which the tests check.
"""
from __future__ import annotations

import argparse
import ast
import copy
import sys
from pathlib import Path

import jupytext
import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapters import ROOT, code_cells, notebook_chapters, read_chapter, rel  # noqa: E402
from tangle import ADD_TO_CLASS, code_cell_sections, exported_module  # noqa: E402

GIVEN_MODULES = {"cnnbook", "cnnbook.plotting", "cnnbook.utils", "cnnbook.data", "cnnbook.grade"}
OUT = ROOT / "_build" / "exercises"
STUB_TAG = "exercise"  # cell tag of exported cells that hold at least one stub
SETUP = '''\
# Student edition: write the functions whose body raises NotImplementedError, then run the
# cells after them, which check your code. use_my_code (called at the end of each cell you edit)
# puts your definitions into the cnnbook package, so the rest of the chapter runs your code.
# The last cell grades your exercises (python -m cnnbook.grade): passed, FAILED, not yet written.
import importlib


def use_my_code(module, names, namespace=None):
    """Make the package module `module` use this notebook's definitions of `names`."""
    namespace = globals() if namespace is None else namespace
    target = importlib.import_module(module)
    for name in names:
        setattr(target, name, namespace[name])
'''
USE_LINE = "use_my_code({module!r}, {names!r})"
GRADE_TAG = "grade"  # cell tag of the last cell of a student edition, which runs the grader
GRADE = '''\
# Grade your exercises: save the notebook, then run this cell. It runs the notebook from the top
# in a fresh kernel (python -m cnnbook.grade) and lists each exercise as passed, FAILED (the first
# check that failed), not yet written, blocked by another exercise, or not checked.
import subprocess
import sys
from pathlib import Path

name = {name!r}  # this notebook's name; change it if you renamed the notebook
mine = max((p for p in (Path(name + ".ipynb"), Path(name + ".md")) if p.exists()),
           key=lambda p: p.stat().st_mtime, default=Path(name + ".ipynb"))  # the last saved
result = subprocess.run([sys.executable, "-m", "cnnbook.grade", str(mine), "--chapter", name],
                        capture_output=True, text=True)
print(result.stdout + result.stderr)
'''


def _is_public(name: str) -> bool:
    return not name.startswith("_") or name == "__init__"


def _adds_to_class(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Call) and getattr(d.func, "id", None) == ADD_TO_CLASS
               for d in node.decorator_list)


def solution_regions(source: str):
    """(qualified name, first line, last line, indent) of each exercise body in a cell (1-based
    line numbers of the statements after the docstring)."""
    tree = ast.parse(source)
    found = []

    def visit(node, owner=None):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not _is_public(
                node.name):
            return
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(
                body[0].value.value, str):
            body = body[1:]
        if body:
            name = f"{owner}.{node.name}" if owner else node.name
            found.append((name, body[0].lineno, node.end_lineno, body[0].col_offset))

    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                visit(item, node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            owner = None
            if _adds_to_class(node):
                owner = ast.unparse(node.decorator_list[0].args[0])
            visit(node, owner)
    return found


def top_level_names(source: str) -> list[str]:
    """Names a cell binds at top level (functions, classes, assignments), in order."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not (isinstance(node, ast.FunctionDef) and _adds_to_class(node)):
                names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return list(dict.fromkeys(names))


def stub_cell(source: str, module: str, chapter: str, section: str) -> tuple[str, list[str]]:
    """The student version of an exported cell and the names of its exercises."""
    lines = source.splitlines()
    regions = solution_regions(source)
    for name, first, last, indent in reversed(regions):
        message = (f"{name}: exercise of the chapter \"{chapter}\", section \"{section}\"; "
                   f"write its body")
        lines[first - 1:last] = [" " * indent + "raise NotImplementedError(",
                                 " " * (indent + 4) + f"{message!r})"]
    names = top_level_names(source)
    text = "\n".join(lines)
    if names:
        text += "\n\n" + USE_LINE.format(module=module, names=names)
    return text, [r[0] for r in regions]


def student_edition(path: Path):
    """(student notebook, exercises as a list of (function, section))."""
    nb = copy.deepcopy(read_chapter(path))
    exercises = []
    for cell, (chapter, section) in zip(code_cells(nb), code_cell_sections(nb)):
        module = next((m for t in cell.metadata.get("tags", []) if (m := exported_module(t))),
                      None)
        if module is None or module in GIVEN_MODULES:
            continue
        cell.source, names = stub_cell(cell.source, module, chapter, section)
        if names:
            cell.metadata["tags"] = list(cell.metadata.get("tags", [])) + [STUB_TAG]
            exercises += [(name, section) for name in names]
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)
    if first is not None:
        nb.cells.insert(first, nbformat.v4.new_code_cell(SETUP, metadata={"tags": ["hide-input"]}))
    if exercises:
        nb.cells.append(nbformat.v4.new_code_cell(GRADE.format(name=path.stem),
                                                  metadata={"tags": [GRADE_TAG]}))
    return nb, exercises


def _added(cell) -> bool:
    """A code cell the student edition adds to the chapter (SETUP at the top, the grader)."""
    return cell.cell_type == "code" and (cell.source == SETUP or GRADE_TAG in cell.metadata.get(
        "tags", []))


def restore(student, chapter_nb):
    """The chapter's notebook back from a student edition (the solutions from chapter_nb)."""
    ours = [c for c in student.cells if c.cell_type == "code" and not _added(c)]
    theirs = code_cells(chapter_nb)
    if len(ours) != len(theirs):
        raise ValueError(f"the student edition has {len(ours)} code cells, the chapter "
                         f"{len(theirs)}")
    out = copy.deepcopy(student)
    out.cells = [c for c in out.cells if not _added(c)]
    for cell, original in zip((c for c in out.cells if c.cell_type == "code"), theirs):
        cell.source = original.source
        cell.metadata["tags"] = [t for t in cell.metadata.get("tags", []) if t != STUB_TAG]
        if not cell.metadata["tags"]:
            del cell.metadata["tags"]
    return out


def write(nb, out: Path, name: str):
    out.mkdir(parents=True, exist_ok=True)
    jupytext.write(nb, out / f"{name}.md", fmt="md:myst")
    nbformat.write(nb, out / f"{name}.ipynb")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--solutions", action="store_true",
                        help="write the chapters back from the student editions in --out")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.chapters] or notebook_chapters()
    total = 0
    for path in paths:
        if args.solutions:
            student = jupytext.read(args.out / f"{path.stem}.md")
            write(restore(student, read_chapter(path)), args.out / "solutions", path.stem)
            continue
        nb, exercises = student_edition(path)
        write(nb, args.out, path.stem)
        total += len(exercises)
        print(f"{rel(path)}: {len(exercises)} exercises -> {rel(args.out / path.stem)}.md/.ipynb")
    if not args.solutions:
        print(f"{total} exercises in {len(paths)} chapters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
