#!/usr/bin/env python3
"""Tangle the book into the ``cnnbook`` package.

    python tools/tangle.py            # (re)write src/cnnbook from the chapters
    python tools/tangle.py --check    # exit 1 with a unified diff if src/cnnbook is out of date

The convention (documented in the preface): a code cell tagged
``export:cnnbook.MODULE`` is copied into ``src/cnnbook/MODULE.py``
(``export:cnnbook`` goes to ``src/cnnbook/__init__.py``).  Chapters are read with
jupytext in the order of ``_toc.yml``; within a module the blocks keep that
order.  Every generated file starts with a banner naming its chapters, and every
block is preceded by a comment naming the chapter file and line it came from.

Classes across cells: in an exported cell, a top-level function decorated with
``@add_to_class(Name)`` (``cnnbook.utils.add_to_class``, which in the notebook
attaches the function to the class) is a *method* of class ``Name``.  ``Name`` must
be a top-level ``class Name`` statement of an earlier exported cell of the same
module.  The tangler moves the method (its source without the ``add_to_class``
line, with any other decorators and the comment lines directly above it) into
the body of that class: after the end of the class statement, indented like the
class body, after a blank line and a ``# ---- chapter:line ----`` comment.
Methods of later cells follow in book order; the rest of each cell stays where
it is.  The package thus has ordinary classes and no ``add_to_class`` call.
Methods are not module-level names.  The lines of multi-line string literals
(other than docstrings) are moved without re-indenting them, so their values
do not change.

Where the book explains each definition: the docstring of every public top-level function and
class of an exported cell gets, after its first paragraph and indented like the docstring, the
line ``Explained in the chapter "TITLE" (book/X.md), section "SECTION".`` (the heading above the
cell); a definition without a docstring gets a docstring of that line alone.  The tangler writes
it into the generated source, so the source, ``help()`` and the API pages (whose Sphinx extension
turns it into a link) say the same, and nothing runs at import.

Locations: every block starts with a ``# ---- chapter:line ----`` comment naming the chapter line
of the line below it.  Where a generated line is not the chapter line after the one before it
(the code after a docstring that got its line, a method moved into its class, the code after a
moved method), another such comment, indented like that line, names its chapter line.  So the
last such comment above any code line of the package, plus the lines in between, gives the
chapter line it comes from: a traceback's line leads to the chapter.

Errors (each names the chapter and line): an export tag naming a module outside
``cnnbook``; two export tags on one cell; an exported cell that is not valid
Python; two exported cells defining the same top-level name in one module; a
non-exported cell redefining a function or class the package exports (later
chapters import from ``cnnbook``, they do not redefine).  For classes across
cells: ``add_to_class`` not written as the first decorator ``@add_to_class(Name)``
of a top-level function, or imported or used otherwise in an exported cell
(import it in a plain cell); no class ``Name`` in an earlier cell of the same
module; a method name defined twice for one class (in the class body or by two
cells); a method using a private ``__name`` (mangled in a class body, not in the
notebook); a method whose decorators or default values use a name the module
binds only after the class (they are evaluated where the class is defined).  For the
"Explained in" line, a docstring the tangler cannot edit: a body that starts on the ``def`` or
``class`` line, code after the docstring on its line, a docstring of several string literals or
a one-quote one continued over lines, a docstring whose escapes (``\\n``) make its text differ
from its value.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import io
import re
import sys
import tokenize
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapters import ROOT, ChapterError, chapters, code_cell_lines, code_cells, read_chapter  # noqa: E402

PACKAGE = "cnnbook"
EXPORT_PREFIX = "export"
_MODULE = re.compile(r"export:(cnnbook(?:\.[A-Za-z_][A-Za-z0-9_]*)?)")
_SEPARATOR = "# " + "-" * 4
ADD_TO_CLASS = "add_to_class"


@dataclass
class Block:
    chapter: str  # chapter path relative to the repository root
    line: int  # 1-based line of the block's first source line in the chapter
    source: str
    # 0-based indices of the cell's lines that moved into a class (add_to_class methods)
    moved: set[int] = field(default_factory=set)
    # 0-based index of the last line of a class statement -> the class name
    class_ends: dict[int, str] = field(default_factory=dict)


@dataclass
class Method:
    """An ``@add_to_class`` function, as it is inserted into its class."""

    chapter: str
    numbers: list[int]  # the chapter line of each of its lines
    lines: list[str]  # its source lines, without the add_to_class line
    keep: set[int]  # indices into lines that must not be re-indented (inside a string)


@dataclass
class ClassInfo:
    """A top-level class of a module, and the methods later cells add to it."""

    where: str  # "chapter:line" of the class statement
    position: tuple[int, int]  # (block index, 0-based line of the class's last line)
    indent: str | None  # indentation of the class body; None if the body is on the class line
    members: dict[str, str] = field(default_factory=dict)  # name -> "chapter:line"
    methods: list[Method] = field(default_factory=list)


@dataclass
class Module:
    name: str
    blocks: list[Block] = field(default_factory=list)
    # top-level name -> "chapter:line" where an exported cell defines it
    defined: dict[str, str] = field(default_factory=dict)
    classes: dict[str, ClassInfo] = field(default_factory=dict)
    # top-level name -> (block index, 0-based line) of its first binding (imports included)
    bound: dict[str, tuple[int, int]] = field(default_factory=dict)
    # public function or class -> where the book explains it, for its docstring
    explained: dict[str, str] = field(default_factory=dict)


def _refers_to_add_to_class(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id == ADD_TO_CLASS


def method_class(node: ast.stmt):
    """For a top-level statement: ``(class name, None)`` if it is an ``@add_to_class(Name)``
    function, ``(None, problem)`` if it uses add_to_class wrongly, else ``(None, None)``."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None, None
    uses = [i for i, d in enumerate(node.decorator_list) if _refers_to_add_to_class(d)]
    if not uses:
        return None, None
    decorator = node.decorator_list[uses[0]]
    if uses != [0]:
        return None, f"@{ADD_TO_CLASS}(...) must be the first (outermost) decorator of {node.name}"
    if not (
        isinstance(decorator, ast.Call)
        and len(decorator.args) == 1
        and not decorator.keywords
        and isinstance(decorator.args[0], ast.Name)
    ):
        return None, f"write @{ADD_TO_CLASS}(ClassName), naming a class, above {node.name}"
    return decorator.args[0].id, None


def add_to_class_targets(source: str) -> list[str]:
    """The classes a cell's ``@add_to_class`` methods go to, in order (for the book's labels)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = (method_class(node)[0] for node in tree.body)
    return list(dict.fromkeys(name for name in found if name))


def _top_level_definitions(tree: ast.Module):
    """(name, lineno, kind) for each top-level binding that the one-definition rule covers
    (an ``@add_to_class`` method is not one: it belongs to its class)."""
    for node in tree.body:
        if method_class(node) != (None, None):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name, node.lineno, "def"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        yield sub.id, node.lineno, "assign"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield node.target.id, node.lineno, "assign"


def _parse_loosely(source: str):
    """Parse a non-exported cell, ignoring IPython magics and shell escapes."""
    cleaned = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        return ast.parse(cleaned)
    except SyntaxError:
        return None


def _bindings(node: ast.stmt):
    """The top-level names a statement binds (imports included)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        for alias in node.names:
            yield (alias.asname or alias.name).split(".")[0]
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name
    else:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                yield sub.id


def _unindented_lines(node: ast.AST) -> set[int]:
    """Lines of ``node`` (1-based) inside a multi-line string literal that is not a docstring:
    indenting them would change the string's value."""
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(node)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
        and isinstance(n.body[0].value.value, str)
    }
    keep: set[int] = set()

    def visit(n):
        string = isinstance(n, ast.Constant) and isinstance(n.value, (str, bytes))
        if string or isinstance(n, ast.JoinedStr):
            if id(n) not in docstrings:
                keep.update(range(n.lineno + 1, n.end_lineno + 1))
            return
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(node)
    return keep


def _add_method(module: Module, block: Block, node, cls: str, start: int, lines: list[str]):
    """Attach an ``@add_to_class(cls)`` function (cell lines ``start``..its end, 1-based) to its
    class; return the error messages."""
    here = f"{block.chapter}:{block.line + node.lineno - 1}"
    info = module.classes.get(cls)
    if info is None:
        return [
            f"{here}: {ADD_TO_CLASS}({cls}): no class {cls} defined earlier in {module.name} "
            f"(a method goes to a class that an earlier cell exported to the same module defines)"
        ]
    if info.indent is None:
        return [f"{here}: {ADD_TO_CLASS}({cls}): the body of class {cls} ({info.where}) must start "
                f"on a line of its own"]
    if node.name in info.members:
        return [
            f"{here}: method {node.name!r} of class {cls} is defined again; it is already "
            f"defined at {info.members[node.name]} (one definition per method: keep one)"
        ]
    info.members[node.name] = here
    errors = []
    names = {getattr(n, a, None) for n in ast.walk(node) for a in ("id", "attr", "name", "arg")}
    private = sorted(
        n for n in names if isinstance(n, str) and n.startswith("__") and not n.endswith("__")
    )
    if private:
        errors.append(
            f"{here}: method {node.name!r} of class {cls} uses the private name {private[0]!r}, "
            f"which Python mangles in a class body but not in the notebook; use one underscore"
        )
    # Decorators and default values are evaluated where the method is defined: in the class body.
    evaluated = node.decorator_list[1:] + node.args.defaults + node.args.kw_defaults
    used = {n.id for e in evaluated if e for n in ast.walk(e) if isinstance(n, ast.Name)}
    for name in sorted(used):
        if name == cls or module.bound.get(name, (-1, -1)) > info.position:
            errors.append(
                f"{here}: method {node.name!r} of class {cls} uses {name!r} in a decorator or "
                f"default value, but {module.name} defines {name!r} only after class {cls} "
                f"({info.where}), where the method goes; define it before the class"
            )
    decorator = node.decorator_list[0]
    dropped = range(decorator.lineno, decorator.end_lineno + 1)
    numbers = [k for k in range(start, node.end_lineno + 1) if k not in dropped]
    keep = _unindented_lines(node)
    info.methods.append(Method(
        block.chapter,
        [block.line + k - 1 for k in numbers],
        [lines[k - 1] for k in numbers],
        {i for i, k in enumerate(numbers) if k in keep},
    ))
    end = node.end_lineno  # the method leaves the cell with the blank lines after it
    while end < len(lines) and not lines[end].strip():
        end += 1
    block.moved.update(range(start - 1, end))
    return errors


def _add_exported_cell(module: Module, block: Block, tree: ast.Module) -> list[str]:
    """Append an exported cell to its module: move its ``@add_to_class`` methods into their
    classes, record its classes and bindings; return the error messages."""
    index, lines, errors = len(module.blocks), block.source.split("\n"), []
    module.blocks.append(block)

    def where(lineno):
        return f"{block.chapter}:{block.line + lineno - 1}"

    decorators: set[int] = set()  # ids of the nodes of add_to_class decorators (checked there)
    classes = []
    previous_end = 0
    for node in tree.body:
        cls, problem = method_class(node)
        if cls or problem:
            decorators.update(id(n) for d in node.decorator_list for n in ast.walk(d))
        if problem:
            errors.append(f"{where(node.lineno)}: {problem}")
        elif cls:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            while start - 1 > previous_end and lines[start - 2].lstrip().startswith("#"):
                start -= 1  # comment lines directly above belong to the method
            errors.extend(_add_method(module, block, node, cls, start, lines))
        else:
            for name in _bindings(node):
                module.bound.setdefault(name, (index, node.lineno - 1))
            if isinstance(node, ast.ClassDef):
                classes.append(node)
        previous_end = node.end_lineno
    for node in ast.walk(tree):
        here = where(getattr(node, "lineno", 1))
        if isinstance(node, ast.Name) and node.id == ADD_TO_CLASS and id(node) not in decorators:
            errors.append(
                f"{here}: {ADD_TO_CLASS} is used in a cell exported to {module.name}; there it may "
                f"only decorate top-level functions: @{ADD_TO_CLASS}(ClassName)"
            )
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            alias.name == ADD_TO_CLASS for alias in node.names
        ):
            errors.append(
                f"{here}: {ADD_TO_CLASS} is imported in a cell exported to {module.name}; import "
                f"it in a plain cell (the package does not need it: the tangler moves the methods "
                f"into their class)"
            )
    for node in classes:
        if node.name in module.classes:
            continue  # a second definition: the one-definition rule reports it
        first = lines[node.body[0].lineno - 1]
        indent = first[: len(first) - len(first.lstrip())]
        if node.body[0].lineno == node.lineno:
            indent = None  # class C: pass
        info = ClassInfo(where(node.lineno), (index, node.end_lineno - 1), indent)
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                info.members.setdefault(stmt.name, where(stmt.lineno))
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                for name in _bindings(stmt):
                    info.members.setdefault(name, where(stmt.lineno))
        module.classes[node.name] = info
        block.class_ends[node.end_lineno - 1] = node.name
    return errors


def collect(root: Path = ROOT) -> dict[str, Module]:
    """Read every chapter in the table of contents and gather the exported blocks."""
    root = Path(root)
    modules: dict[str, Module] = {}
    errors: list[str] = []
    plain_defs: list[tuple[str, str]] = []  # (name, "chapter:line") defined by non-exported cells

    for path in chapters(root / "_toc.yml"):
        chapter = path.relative_to(root).as_posix()
        if not path.exists():
            errors.append(f"_toc.yml names {chapter}, which does not exist")
            continue
        nb = read_chapter(path)
        try:
            lines = code_cell_lines(path, nb)
        except ChapterError as exc:
            errors.append(str(exc))
            continue
        sections = code_cell_sections(nb)
        for cell, line, (title, section) in zip(code_cells(nb), lines, sections):
            where = f"{chapter}:{line}"
            tags = [t for t in cell.metadata.get("tags", []) if str(t).startswith(EXPORT_PREFIX)]
            if not tags:
                tree = _parse_loosely(cell.source)
                if tree is not None:
                    for name, lineno, kind in _top_level_definitions(tree):
                        if kind == "def":
                            plain_defs.append((name, f"{chapter}:{line + lineno - 1}"))
                continue
            if len(tags) > 1:
                errors.append(f"{where}: a cell may be exported to one module only, found tags {tags}")
                continue
            module_name = exported_module(tags[0])
            if module_name is None:
                errors.append(
                    f"{where}: export tag {tags[0]!r} must name a module of the {PACKAGE} package, "
                    f"like 'export:cnnbook.layers' (one level below cnnbook)"
                )
                continue
            try:
                tree = ast.parse(cell.source)
            except SyntaxError as exc:
                errors.append(
                    f"{chapter}:{line + (exc.lineno or 1) - 1}: the cell exported to {module_name} "
                    f"is not valid Python: {exc.msg}"
                )
                continue
            module = modules.setdefault(module_name, Module(module_name))
            for node in tree.body:
                if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                        and not node.name.startswith("_") and method_class(node) == (None, None)):
                    module.explained[node.name] = (f'the chapter "{title}" ({chapter}), '
                                                   f'section "{section}"')
            for name, lineno, _kind in _top_level_definitions(tree):
                here = f"{chapter}:{line + lineno - 1}"
                if name in module.defined:
                    errors.append(
                        f"{here}: {name!r} is defined again in {module_name}; it is already defined at "
                        f"{module.defined[name]} (one definition per name: keep one, import it elsewhere)"
                    )
                else:
                    module.defined[name] = here
            errors.extend(_add_exported_cell(module, Block(chapter, line, cell.source), tree))

    exported = {}
    for module in modules.values():
        for name, where in module.defined.items():
            exported.setdefault(name, (module.name, where))
    for name, where in plain_defs:
        if name in exported:
            mod, origin = exported[name]
            errors.append(
                f"{where}: redefines {name!r}, which {mod} exports (defined at {origin}); "
                f"import it instead: from {mod} import {name}"
            )
    if errors:
        raise ChapterError("\n".join(errors))
    return modules


def code_cell_sections(nb) -> list[tuple[str, str]]:
    """(chapter title, title of the section it is in) for each code cell of a chapter."""
    title = section = ""
    out = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for text in cell.source.splitlines():
                match = re.match(r"(#{1,3})\s+(.+)", text)
                if match:
                    section = match[2].strip()
                    if len(match[1]) == 1 and not title:
                        title = section
        elif cell.cell_type == "code":
            out.append((title, section))
    return out


def exported_module(tag: str):
    """The module an export tag names (``export:cnnbook.layers`` -> ``cnnbook.layers``), else None."""
    match = _MODULE.fullmatch(str(tag))
    return match[1] if match else None


def module_path(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return f"src/{PACKAGE}/__init__.py"
    return f"src/{PACKAGE}/{parts[1]}.py"


def render(module: Module) -> str:
    sources = list(dict.fromkeys(b.chapter for b in module.blocks))
    out = [
        "# This file is generated by tools/tangle.py from the cnnbook chapters; do not edit it.",
        "# Edit the chapter named above each block, then run `python tools/tangle.py`.",
        "# Chapters: " + ", ".join(sources),
    ]
    explained: set[str] = set()
    for block in module.blocks:
        lines = _render_block(module, block)
        if block.moved and not any(text.strip() for text, _ in lines):
            continue  # the cell held only methods, which are now in their classes
        lines = _explain_definitions(module, lines, explained)
        out += ["", ""] + _with_locations(lines)
    missing = sorted(set(module.explained) - explained)
    if missing:  # collect() found them at the top level of a cell: a bug of the tangler
        raise ChapterError(f"{module.name}: no definition of {', '.join(missing)} to write "
                           f"'Explained in ...' into")
    return "\n".join(out) + "\n"


# A line of a generated module, with the chapter line it comes from: (chapter, line), or None for
# a line the tangler adds (the blank line before a method, the "Explained in" line of a docstring).
Line = tuple[str, "tuple[str, int] | None"]


def _render_block(module: Module, block: Block) -> list[Line]:
    """A cell's lines without its methods, and with the methods of its classes inserted after
    the end of each class statement; leading and trailing empty lines dropped."""
    out = []
    for i, text in enumerate(block.source.split("\n")):
        if i not in block.moved:
            out.append((text, (block.chapter, block.line + i)))
        if i in block.class_ends:
            info = module.classes[block.class_ends[i]]
            for method in info.methods:
                out.append(("", None))
                for j, (line, number) in enumerate(zip(method.lines, method.numbers)):
                    if j not in method.keep:  # lines inside a multi-line string stay as they are
                        line = info.indent + line if line.strip() else ""
                    out.append((line, (method.chapter, number)))
    while out and not out[0][0]:
        out.pop(0)
    while out and not out[-1][0]:
        out.pop()
    return out


def _with_locations(lines: list[Line]) -> list[str]:
    """The block's text, with a ``# ---- chapter:line ----`` comment naming the chapter line of
    the line below it: above the first line, and above every line that is not the chapter line
    after the one the previous comment implies (a method moved into its class, the code after a
    docstring that got its "Explained in" line, the code after a moved method). So the line of
    a traceback in the package leads to the chapter: the last such comment above it, plus the
    lines in between. The comments go only where a comment line changes nothing (not inside a
    multi-line string), so the first code line after a docstring gets the one the docstring
    needs."""
    safe = _comment_safe(lines)
    out, expected = [], None
    for i, (text, origin) in enumerate(lines):
        if origin is not None and (
            i == 0 or (text.strip() and origin != expected and i in safe)
        ):
            indent = "" if i == 0 else text[: len(text) - len(text.lstrip())]
            out.append(f"{indent}{_SEPARATOR} {origin[0]}:{origin[1]} {'-' * 4}")
            expected = origin
        out.append(text)
        expected = expected and (expected[0], expected[1] + 1)
    return out


def _comment_safe(lines: list[Line]) -> set[int]:
    """Indices of the lines above which a comment line may go: where a statement, a comment or a
    line inside brackets starts (not inside a multi-line string, not after a backslash)."""
    source = "\n".join(text for text, _ in lines) + "\n"
    safe, starts_line = set(), True
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if starts_line:
            safe.add(token.start[0] - 1)
        starts_line = token.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT,
                                     tokenize.DEDENT)
    return safe


def _explain_definitions(module: Module, lines: list[Line], explained: set[str]) -> list[Line]:
    """Write "Explained in the chapter ..., section ..." into the docstring of each public
    function and class that the block defines at its top level (``module.explained``), after
    the docstring's first paragraph, indented like the docstring; a definition without a
    docstring gets one holding that line. Adds the names done to ``explained``."""
    tree = ast.parse("\n".join(text for text, _ in lines))
    nodes = [n for n in tree.body if isinstance(n, _DEFINITIONS) and n.name in module.explained]
    expected = {}  # name -> the docstring that the old import-time rewrite made, for a check
    for node in reversed(nodes):  # bottom up: an edit does not move the lines above it
        sentence = f"Explained in {module.explained[node.name]}."
        expected[node.name] = _docstring_edit(node, lines, sentence)
        explained.add(node.name)
    if not nodes:
        return lines
    tree = ast.parse("\n".join(text for text, _ in lines))
    for node in tree.body:
        if isinstance(node, _DEFINITIONS) and node.name in expected:
            if _cleaned(ast.get_docstring(node, clean=False) or "") != expected[node.name]:
                _cannot(node, lines, "its docstring does not come out as expected; write it as a "
                                     'plain """triple-quoted""" string', node.body[0].lineno)
    return lines


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _cleaned(doc: str) -> str:
    """A docstring as help() shows it (``inspect.cleandoc``), without trailing white space."""
    return "\n".join(line.rstrip() for line in inspect.cleandoc(doc).split("\n"))


def _cannot(node, lines: list[Line], problem: str, lineno: int | None = None):
    origin = lines[(lineno or node.lineno) - 1][1] or lines[node.lineno - 1][1]
    raise ChapterError(f"{origin[0]}:{origin[1]}: the tangler cannot write where the book "
                       f"explains {node.name!r} into its docstring: {problem}")


def _docstring_edit(node, lines: list[Line], sentence: str) -> str:
    """Put ``sentence`` into the docstring of ``node`` (a definition at the top of ``lines``):
    edit ``lines`` in place. Returns the cleaned docstring the result must have."""
    first = node.body[0]
    doc = first.value if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                          and isinstance(first.value.value, str)) else None
    # the first line of the body (a decorator's, if it is a decorated definition)
    start = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])])
    text = lines[start - 1][0]
    indent = text[: len(text) - len(text.lstrip())]
    if len(indent.encode()) != first.col_offset:  # (a byte offset)
        keyword = "class" if isinstance(node, ast.ClassDef) else "def"
        _cannot(node, lines, f"its body starts on the line of its `{keyword}`; start it on a "
                             f"line of its own", start)
    if doc is None:  # a new docstring, the sentence alone
        text = _escape(sentence, '"""', False, node, lines)
        lines.insert(start - 1, (f'{indent}"""{text}"""', None))
        return _cleaned(sentence)
    head, _, rest = doc.value.partition("\n\n")  # the old rewrite: after the first paragraph
    expected = _cleaned(f"{head.rstrip()}\n\n{indent}{sentence}\n\n{rest}")
    last = lines[doc.end_lineno - 1][0]
    close = len(last.encode()[: doc.end_col_offset].decode())
    literal = "\n".join(text for text, _ in lines[doc.lineno - 1: doc.end_lineno])
    literal = literal[len(indent): len(literal) - len(last) + close]
    after = last[close:]
    if after.strip() and not after.strip().startswith("#"):
        _cannot(node, lines, "code follows its docstring on the same line", doc.end_lineno)
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(literal).readline)
              if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]
    if len(tokens) != 1:
        _cannot(node, lines, "its docstring is several string literals; write it as one",
                doc.lineno)
    prefix, quote = re.match(r"([A-Za-z]*)(\"\"\"|'''|\"|')", literal).groups()
    raw = "r" in prefix.lower()
    body = literal[len(prefix) + len(quote): len(literal) - len(quote)].split("\n")
    triple = quote if len(quote) == 3 else quote * 3
    line = f"{indent}{_escape(sentence, triple, raw, node, lines)}"
    if len(quote) == 1 and len(body) > 1:
        _cannot(node, lines, "its one-quote docstring goes on over several lines; write it as "
                             'a """triple-quoted""" string', doc.lineno)
    # the first empty line inside the docstring ends its first paragraph
    blank = next((k for k in range(1, len(body) - 1) if body[k] == ""), None)
    if blank is not None:
        at = doc.lineno - 1 + blank
        lines[at:at] = [("", None), (line, None)]
    elif len(body) > 1 and not body[-1].strip():  # the closing quotes are on a line of their own
        at = doc.end_lineno - 1
        lines[at:at] = [("", None), (line, None)]
    else:  # closing quotes after text: they go to a line of their own, after the sentence
        opening = lines[doc.end_lineno - 1][1]
        if len(body) == 1:  # one line: the literal becomes a triple-quoted one
            head_text = f"{indent}{prefix}{triple}{body[0].rstrip()}"
        else:
            head_text = last[: close - len(quote)].rstrip()
        lines[doc.end_lineno - 1: doc.end_lineno] = [
            (head_text, opening), ("", None), (line, None), (f"{indent}{triple}{after}", None)]
    return expected


def _escape(sentence: str, quote: str, raw: bool, node, lines: list[Line]) -> str:
    """``sentence`` as it must be written inside a string literal closed by ``quote``."""
    if not raw:
        sentence = sentence.replace("\\", "\\\\")
    if quote in sentence:
        if raw:
            _cannot(node, lines, f"the sentence {sentence!r} holds the quotes {quote} that close "
                                 f"its raw docstring")
        sentence = sentence.replace(quote[0], "\\" + quote[0])
    return sentence


def tangle(root: Path = ROOT) -> dict[str, str]:
    """Map of repository-relative path -> content for every file of the package."""
    modules = collect(root)
    files = {module_path(name): render(mod) for name, mod in sorted(modules.items())}
    for path, text in files.items():
        try:
            ast.parse(text)
        except SyntaxError as exc:  # every cell parses; a bug of the tangler if their sum does not
            raise ChapterError(f"{path}:{exc.lineno}: the generated module is not valid Python: "
                               f"{exc.msg}") from None
    init = module_path(PACKAGE)
    files.setdefault(
        init,
        "# This file is generated by tools/tangle.py from the cnnbook chapters; do not edit it.\n",
    )
    return dict(sorted(files.items()))


def existing(root: Path) -> dict[str, str]:
    pkg = Path(root) / "src" / PACKAGE
    if not pkg.exists():
        return {}
    found = {}
    for path in sorted(pkg.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            found[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8", errors="replace")
    return found


def diff(expected: dict[str, str], actual: dict[str, str]) -> str:
    chunks = []
    for path in sorted(set(expected) | set(actual)):
        old, new = actual.get(path), expected.get(path)
        if old == new:
            continue
        fromfile = f"a/{path}" if old is not None else "/dev/null"
        tofile = f"b/{path}" if new is not None else "/dev/null"
        lines = list(
            difflib.unified_diff(
                (old or "").splitlines(keepends=True),
                (new or "").splitlines(keepends=True),
                fromfile=fromfile,
                tofile=tofile,
            )
        )
        # an empty stale file, or a difference in the final newline only, still needs a header
        chunks.extend(lines or [f"--- {fromfile}\n", f"+++ {tofile}\n"])
        if lines and not lines[-1].endswith("\n"):
            chunks.append("\n\\ No newline at end of file\n")
    return "".join(chunks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 and print a diff if out of date")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        expected = tangle(root)
    except ChapterError as exc:
        print(f"tangle: error:\n{exc}", file=sys.stderr)
        return 2
    actual = existing(root)
    delta = diff(expected, actual)
    if args.check:
        if delta:
            sys.stdout.write(delta)
            print(
                "\ntangle --check: src/cnnbook differs from what the chapters produce. It is generated: "
                "edit the chapter, then run `python tools/tangle.py` and commit both.",
                file=sys.stderr,
            )
            return 1
        print(f"tangle --check: src/{PACKAGE} matches the book ({len(expected)} files)")
        return 0
    for path in set(actual) - set(expected):
        (root / path).unlink()
        print(f"removed {path}")
    for path, content in expected.items():
        if actual.get(path) != content:
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8", newline="\n")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
