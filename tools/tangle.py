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

Errors (each names the chapter and line): an export tag naming a module outside
``cnnbook``; two export tags on one cell; an exported cell that is not valid
Python; two exported cells defining the same top-level name in one module; a
non-exported cell redefining a function or class the package exports (later
chapters import from ``cnnbook``, they do not redefine).
"""
from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapters import ROOT, ChapterError, chapters, code_cell_lines, code_cells, read_chapter  # noqa: E402

PACKAGE = "cnnbook"
EXPORT_PREFIX = "export"
_MODULE = re.compile(r"export:(cnnbook(?:\.[A-Za-z_][A-Za-z0-9_]*)?)")
_SEPARATOR = "# " + "-" * 4


@dataclass
class Block:
    chapter: str  # chapter path relative to the repository root
    line: int  # 1-based line of the block's first source line in the chapter
    source: str


@dataclass
class Module:
    name: str
    blocks: list[Block] = field(default_factory=list)
    # top-level name -> "chapter:line" where an exported cell defines it
    defined: dict[str, str] = field(default_factory=dict)


def _top_level_definitions(tree: ast.Module):
    """(name, lineno, kind) for each top-level binding that the one-definition rule covers."""
    for node in tree.body:
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
        for cell, line in zip(code_cells(nb), lines):
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
            for name, lineno, _kind in _top_level_definitions(tree):
                here = f"{chapter}:{line + lineno - 1}"
                if name in module.defined:
                    errors.append(
                        f"{here}: {name!r} is defined again in {module_name}; it is already defined at "
                        f"{module.defined[name]} (one definition per name: keep one, import it elsewhere)"
                    )
                else:
                    module.defined[name] = here
            module.blocks.append(Block(chapter, line, cell.source))

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
    for block in module.blocks:
        out.append("")
        out.append("")
        out.append(f"{_SEPARATOR} {block.chapter}:{block.line} {'-' * 4}")
        out.append(block.source.strip("\n"))
    return "\n".join(out) + "\n"


def tangle(root: Path = ROOT) -> dict[str, str]:
    """Map of repository-relative path -> content for every file of the package."""
    modules = collect(root)
    files = {module_path(name): render(mod) for name, mod in sorted(modules.items())}
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
