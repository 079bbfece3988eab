"""A pytest plugin that runs MyST-markdown chapters under nbval.

nbval only collects ``.ipynb`` files.  This collector reads a chapter ``.md``
with jupytext, merges the chapter's reference outputs into its code cells (after
refusing a stale reference, see ``chapters.load_reference``) and hands the
resulting notebook to nbval's own collector, in strict mode: every output of
every code cell must match the reference, after the sanitizers of
``tools/nbval_sanitize.cfg``.

The kernel is the ``python3`` kernel of the environment running pytest, started
in the chapter's folder with the repository's ``src`` first on ``PYTHONPATH``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from nbval.plugin import IPyNbFile

from chapters import ChapterError, chapters, kernel_environment, rel, with_reference_outputs

SANITIZE = Path(__file__).resolve().parent / "nbval_sanitize.cfg"
KERNEL = "python3"


def is_chapter(path: Path) -> bool:
    """A MyST notebook: a .md file whose front matter has jupytext and a kernelspec."""
    if path.suffix != ".md" or path.name.lower() == "readme.md":
        return False
    try:
        head = path.read_text(encoding="utf-8")[:2000]
    except OSError:
        return False
    if not head.startswith("---"):
        return False
    front = head.split("\n---", 1)[0]
    return "jupytext:" in front and "kernelspec:" in front


@contextmanager
def _environ(env: dict):
    saved = os.environ.copy()
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class MystChapter(IPyNbFile):
    """nbval's notebook collector, fed with a chapter plus its reference outputs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compare_outputs = True  # always strict: a changed output fails, even under --nbval-lax

    def collect(self):
        path = Path(self.fspath)
        try:
            nb = with_reference_outputs(path)
        except ChapterError as exc:
            raise self.CollectError(str(exc)) from None
        kernel = nb.metadata.get("kernelspec", {}).get("name")
        if kernel != KERNEL:
            raise self.CollectError(f"{rel(path)}: kernelspec name is {kernel!r}; chapters use {KERNEL!r}")
        with mock.patch("nbval.plugin.nbformat.read", return_value=nb):
            yield from super().collect()

    def setup(self):
        # The chapter's python3 kernel is the one of this environment (nbval's
        # "current env" kernel), started with the book's kernel environment.
        self.config.option.nbval_current_env = True
        self.config.option.nbval_kernel_name = None
        with _environ(kernel_environment()):
            super().setup()
        assert self.kernel is not None

    def get_sanitize_files(self):
        files = [str(SANITIZE)]
        extra = self.parent.config.option.nbval_sanitize_with
        if extra:
            files.append(extra)
        return files

    def setup_sanitize_files(self):
        from nbval.plugin import get_sanitize_patterns

        for fname in self.get_sanitize_files():
            with open(fname, encoding="utf-8") as f:
                self.sanitize_patterns.update(get_sanitize_patterns(f.read()))


def pytest_collect_file(file_path, parent):
    opt = parent.config.option
    if getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False):
        if file_path.suffix == ".ipynb":
            return None  # nbval's own collector handles notebooks
    path = Path(file_path).resolve()
    if not is_chapter(path):
        return None
    # A directory run (pytest book/) takes the chapters of the book, i.e. those in
    # _toc.yml; a chapter named on the command line is always taken.
    named = {Path(arg.split("::")[0]).resolve() for arg in parent.config.args}
    if path in named or path in _toc_chapters():
        return MystChapter.from_parent(parent, path=file_path)
    return None


def _toc_chapters() -> set:
    try:
        return {p.resolve() for p in chapters()}
    except FileNotFoundError:
        return set()
