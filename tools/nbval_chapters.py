"""A pytest plugin that runs MyST-markdown chapters under nbval.

nbval only collects ``.ipynb`` files.  This collector reads a chapter ``.md``
with jupytext, merges the chapter's reference outputs into its code cells (after
refusing a stale reference, see ``chapters.load_reference``) and hands the
resulting notebook to nbval's own collector, in strict mode: every output of
every code cell must match the reference, after the sanitizers of
``tools/nbval_sanitize.cfg``.

Cells tagged ``data-dependent`` are the exception.  Their outputs depend on the copy
of CIFAR-10 the chapter read, whose fingerprint the reference stores
(``data_fingerprint``, written by ``tools/refresh_outputs.py``).  When the copy at
hand has that fingerprint, they are compared strictly like every other cell.
Otherwise they are compared with every number sanitized (``DATA_SANITIZERS``) and
without their stderr (the loader's warning names the copy) or images: they still
execute, so the floors they assert must hold on any copy.  The terminal summary
says in which mode each data-dependent chapter ran.

Cells tagged ``machine-dependent`` (numbers that differ between machines or runs: a long float32
training run, timings) are always compared that way: their text strictly, their numbers not.

The kernel is the ``python3`` kernel of the environment running pytest (or the kernel named by
``--chapter-kernel``), started in the chapter's folder with the repository's ``src`` first on
``PYTHONPATH``. With ``--binder-env DIR`` the harness first builds what Binder builds for a reader
in DIR (``chapters.make_binder_env``: a fresh environment from ``binder/requirements.txt``, the
package installed by ``binder/postBuild``) and runs every chapter in that environment's kernel,
which imports the installed package; ``tools/test.sh`` runs the book this way, so one execution
of each chapter checks both its outputs and the Binder environment.

After a chapter's last cell the harness asks its kernel where ``cnnbook`` came from: the
repository's ``src`` for this environment's kernel, the kernel's own environment for any other
(for ``--binder-env``, the one built in DIR). Anything else fails the chapter, and the terminal
summary names the interpreter and package every chapter ran with.
"""
from __future__ import annotations

import ast
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from nbval.plugin import IPyNbCell, IPyNbFile

from chapters import (
    BINDER_KERNEL,
    DATA_TAG,
    MACHINE_TAG,
    ROOT,
    ChapterError,
    chapter_timeout,
    chapters,
    data_cells,
    is_notebook,
    kernel_environment,
    make_binder_env,
    rel,
    with_reference_outputs,
)

SANITIZE = Path(__file__).resolve().parent / "nbval_sanitize.cfg"
KERNEL = "python3"


# Applied, in this order, to both outputs of a data-dependent cell when the CIFAR-10 copy at
# hand is not the one the references were made with: a copy's name, then every number (with
# the spaces before it, as aligned columns shift with the width of a number), then the layout
# that follows from the widths of numbers: runs of white space (NumPy wraps long arrays where
# the numbers make it) and the blanks NumPy pads before or after a bracket or comma.
DATA_SANITIZERS = [
    (re.compile(r"\bofficial\b|sha256:[0-9a-f]{16,64}"), "<copy>"),
    (re.compile(r"[ \t]*[-+\u2212]?(?:\d[\d,_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|\b(?:nan|inf)\b"), "#"),
    (re.compile(r"\s+"), " "),
    (re.compile(r" ?([\[\](),]) ?"), r"\1"),
]

# chapter -> (mode, data-dependent cells, stored fingerprint, fingerprint at hand), for the summary
DATA_MODES: dict = {}

# (kernel, interpreter, folder cnnbook was imported from) -> chapters run so, for the summary
KERNELS: dict = {}

# --binder-env DIR -> the BinderEnv built there, or the ChapterError building it raised (so a
# failed build is reported for every chapter but tried only once); and DIR -> build time in s
BINDER_ENVS: dict = {}
BINDER_TIMES: dict = {}

# Evaluated in a chapter's kernel after its last cell (a user expression: it prints nothing and
# binds no name): the interpreter, its environment, and the file ``cnnbook`` is imported from.
_WHERE = ("__import__('json').dumps([__import__('sys').executable, __import__('sys').prefix, "
          "__import__('cnnbook').__file__])")


def fingerprint_at_hand() -> str:
    """The fingerprint of the CIFAR-10 copy a chapter's kernel finds (same environment)."""
    with _environ(kernel_environment()):
        from cnnbook.data import cifar10_fingerprint

        return cifar10_fingerprint()


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


class ChapterCell(IPyNbCell):
    """nbval's cell item; a data-dependent cell is compared as its chapter's data mode says."""

    sanitize_data = False

    def runtest(self):
        tags = self.cell.metadata.get("tags", [])
        if MACHINE_TAG in tags:
            self.sanitize_data = True
        elif DATA_TAG in tags:
            self.sanitize_data = self.parent.data_mode() == "sanitized"
        # A chapter's own cell timeout (front matter ``mystnb: execution_timeout``, which the
        # HTML build and refresh_outputs.py use too) replaces nbval's --nbval-cell-timeout.
        option = self.config.option
        saved = option.nbval_cell_timeout
        option.nbval_cell_timeout = chapter_timeout(self.parent.nb, default=int(float(saved)))
        try:
            super().runtest()
        finally:
            option.nbval_cell_timeout = saved

    def compare_outputs(self, test, ref, skip_compare=None):
        if self.sanitize_data:
            test, ref = ([o for o in outs if o.get("name") != "stderr"] for outs in (test, ref))
        return super().compare_outputs(test, ref, skip_compare)

    def sanitize(self, s):
        if self.sanitize_data and isinstance(s, str):
            for regex, replace in DATA_SANITIZERS:
                s = regex.sub(replace, s)
        return super().sanitize(s)


class MystChapter(IPyNbFile):
    """nbval's notebook collector, fed with a chapter plus its reference outputs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compare_outputs = True  # always strict: a changed output fails, even under --nbval-lax
        self._data_mode = None

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
            for item in super().collect():
                # nbval's IPyNbCell refers to itself by its module-global name, so the subclass
                # cannot be patched in there; the items are given its class after construction.
                item.__class__ = ChapterCell
                yield item

    def data_mode(self) -> str:
        """"strict" if the CIFAR-10 copy at hand is the reference's, else "sanitized"."""
        if self._data_mode is None:
            stored = self.nb.metadata.get("cnnbook", {}).get("data_fingerprint")
            try:
                current = fingerprint_at_hand()
            except (OSError, RuntimeError, ImportError) as exc:  # the loader's errors name the fix
                raise RuntimeError(f"cannot tell which CIFAR-10 copy this chapter reads: {exc}")
            self._data_mode = "strict" if current == stored else "sanitized"
            DATA_MODES[rel(Path(self.fspath))] = (self._data_mode, len(data_cells(self.nb)),
                                                   stored, current)
        return self._data_mode

    def setup(self):
        # The chapter's python3 kernel is the one of this environment (nbval's "current env"
        # kernel), the Jupyter kernel named by --chapter-kernel, or the kernel of the Binder
        # environment of --binder-env; each is started with the book's kernel environment.
        kernel, extra = chapter_kernel(self.config)
        self.config.option.nbval_current_env = kernel is None
        self.config.option.nbval_kernel_name = kernel
        with _environ({**kernel_environment(), **extra}):
            super().setup()
        assert self.kernel is not None

    def teardown(self):
        problem = None
        if self.kernel is not None and self.kernel.is_alive():
            problem = self.check_package()
        super().teardown()
        if problem:
            pytest.fail(f"{rel(Path(self.fspath))}: {problem}", pytrace=False)

    def check_package(self) -> str | None:
        """Ask the chapter's kernel where ``cnnbook`` came from; record the answer for the
        summary and return what is wrong with it (None if nothing is)."""
        kc = self.kernel.kc
        msg_id = kc.execute("", silent=True, store_history=False, user_expressions={"w": _WHERE})
        try:
            while True:
                reply = kc.get_shell_msg(timeout=60)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
        except Exception as exc:  # queue.Empty: the kernel did not answer
            return f"the chapter's kernel did not say where cnnbook came from ({exc!r})"
        answer = reply["content"].get("user_expressions", {}).get("w", {})
        if answer.get("status") != "ok":
            return (f"the chapter's kernel cannot import cnnbook after the last cell: "
                    f"{answer.get('ename')}: {answer.get('evalue')}")
        executable, prefix, module = json.loads(ast.literal_eval(answer["data"]["text/plain"]))
        kernel, _ = chapter_kernel(self.config)
        folder = Path(module).resolve().parent
        KERNELS.setdefault((kernel or "python3 of this environment", executable, str(folder)),
                           []).append(rel(Path(self.fspath)))
        if kernel is None:
            expected, what = ROOT / "src", "the repository's src"
        else:
            expected, what = Path(prefix).resolve(), f"the kernel's environment {prefix}"
            binder = self.config.getoption("binder_env")
            if binder and expected != BINDER_ENVS[binder].prefix.resolve():
                return (f"the chapter ran in {prefix}, not in the Binder environment built in "
                        f"{binder}")
        if expected != folder and expected not in folder.parents:
            return (f"the chapter's kernel imported cnnbook from {folder}, not from {what}: "
                    "it did not run the package it was meant to test")
        return None

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


def chapter_kernel(config) -> tuple:
    """(name of the Jupyter kernel to run the chapters in, or None for this environment's
    python3; variables to add to the environment the kernel is started from). With
    --binder-env the Binder environment is built on the first call."""
    binder = config.getoption("binder_env")
    if not binder:
        return config.getoption("chapter_kernel"), {}
    if binder not in BINDER_ENVS:
        start = time.monotonic()
        try:
            BINDER_ENVS[binder] = make_binder_env(Path(binder))
        except ChapterError as exc:
            BINDER_ENVS[binder] = exc
        BINDER_TIMES[binder] = time.monotonic() - start
    env = BINDER_ENVS[binder]
    if isinstance(env, ChapterError):
        raise ChapterError(str(env))  # the same message for every chapter, built once
    path = os.pathsep.join(filter(None, [str(env.jupyter_path), os.environ.get("JUPYTER_PATH")]))
    return BINDER_KERNEL, {"JUPYTER_PATH": path}


def pytest_addoption(parser):
    parser.addoption(
        "--chapter-kernel", default=None, metavar="NAME",
        help="run the chapters in the Jupyter kernel NAME (a kernelspec on JUPYTER_PATH) instead "
             "of this environment's python3; that kernel must import cnnbook from its own "
             "environment")
    parser.addoption(
        "--binder-env", default=None, metavar="DIR",
        help="build what Binder builds in DIR (cleared first; a fresh environment from "
             "binder/requirements.txt and .wheelhouse, the package installed by binder/postBuild) "
             "and run the chapters in its kernel; tools/test.sh runs the book this way")


def pytest_configure(config):
    binder = config.getoption("binder_env", None)
    if binder and config.getoption("chapter_kernel"):
        raise pytest.UsageError("--binder-env runs the chapters in the Binder environment's "
                                "kernel: it cannot be combined with --chapter-kernel")
    if binder is not None:
        if not binder.strip():
            raise pytest.UsageError(f"--binder-env needs a directory, got {binder!r}")
        config.option.binder_env = str(Path(binder).resolve())


def pytest_terminal_summary(terminalreporter):
    """Say which interpreter and package ran the chapters, and how the data-dependent cells of
    each chapter were compared."""
    write = terminalreporter.write_line
    binder = terminalreporter.config.getoption("binder_env", None)
    if binder in BINDER_ENVS:
        env = BINDER_ENVS[binder]
        write("")
        if isinstance(env, ChapterError):
            write(f"Binder environment in {binder}: not built ({str(env).splitlines()[0]})")
        else:
            write(f"Binder environment built in {binder} in {BINDER_TIMES[binder]:.0f} s "
                  "(binder/requirements.txt + binder/postBuild)")
    if KERNELS:
        write("")
        write("chapters' kernels:")
        for (kernel, executable, folder), names in sorted(KERNELS.items()):
            count = f"{len(names)} chapter" + ("s" if len(names) > 1 else "")
            write(f"  {kernel}: {executable}, cnnbook from {folder} ({count})")
        KERNELS.clear()
    if not DATA_MODES:
        return
    write("")
    write("data-dependent cells (tag 'data-dependent'):")
    for chapter, (mode, n, stored, current) in sorted(DATA_MODES.items()):
        if mode == "strict":
            how = f"compared strictly: the CIFAR-10 copy at hand is the references' ({current})"
        else:
            how = (f"compared with numbers sanitized: the copy at hand is {current}, the references "
                   f"were made on {stored}")
        write(f"  {chapter}: {n} cells {how}")
    DATA_MODES.clear()


def pytest_collect_file(file_path, parent):
    opt = parent.config.option
    if getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False):
        if file_path.suffix == ".ipynb":
            return None  # nbval's own collector handles notebooks
    path = Path(file_path).resolve()
    if not is_notebook(path):
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
