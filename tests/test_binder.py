"""Binder: the pins in binder/requirements.txt are the versions of the environment the
tests run in (the one CI verifies the reference outputs with), every library a chapter
imports is pinned, and a fresh venv made only from those pins (plus the package, installed
as binder/postBuild does, and nbclient, which Binder's Jupyter base image provides) runs
the chapters and prints what their reference outputs hold.

That last check is not a test here: it is the nbval stage of tools/test.sh, which builds that
environment (the harness's --binder-env) and runs every chapter in its kernel, so each chapter
executes once for both (test_ci_runs_every_chapter_in_the_binder_environment). These tests
check the parts: the environment --binder-env builds, that its kernel runs the installed
package (and that the harness fails a kernel that does not), that a chapter runs there the
way a reader runs it on Binder."""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest

from _support import CHAPTER_HEADER, ROOT, TOOLS, WHEELHOUSE, run, skip_or_fail

REQUIREMENTS = ROOT / "binder" / "requirements.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def binder_pins() -> dict:
    """{canonical name: version} from binder/requirements.txt; every line must be an exact pin."""
    pins = {}
    for number, raw in enumerate(REQUIREMENTS.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"binder/requirements.txt:{number}: {raw!r} is not an exact pin `name==version`"
        name = canonical(match.group(1))
        assert name not in pins, f"binder/requirements.txt:{number}: {name} is pinned twice"
        pins[name] = match.group(2)
    return pins


def test_pins_are_the_versions_ci_verified():
    """The environment running the tests (and the chapters under nbval) has every pinned
    version: tools/setup.sh installs it under the pins, so a pin moved without re-running
    setup, or a setup that drifted from the pins, fails here."""
    drift = []
    for name, pinned in sorted(binder_pins().items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != pinned:
            drift.append(f"{name}: pinned {pinned}, this environment has {installed}")
    assert not drift, (
        "binder/requirements.txt and the tested environment differ (run `bash tools/setup.sh`, "
        "or move the pin and re-run the tests):\n  " + "\n  ".join(drift)
    )


def test_setup_installs_under_the_pins():
    setup = (ROOT / "tools" / "setup.sh").read_text()
    assert re.search(r'-e "\.\[dev\]"\s*\\?\s*-c binder/requirements\.txt', setup), (
        "tools/setup.sh must install the environment with `-c binder/requirements.txt`"
    )


def test_runtime_pins_this_python():
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    here = f"python-{sys.version_info.major}.{sys.version_info.minor}"
    assert runtime == here, f"binder/runtime.txt says {runtime!r}; the tests run on {here}"


def chapter_imports() -> set:
    """Top-level modules imported by the chapters' code cells and the package."""
    from chapters import code_cells, notebook_chapters, read_chapter

    sources = [cell.source for path in notebook_chapters() for cell in code_cells(read_chapter(path))]
    sources += [path.read_text() for path in sorted((ROOT / "src" / "cnnbook").glob("*.py"))]
    found = set()
    for source in sources:
        for match in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", source, re.M):
            found.add(match.group(1))
    return found


def test_every_library_a_chapter_imports_is_pinned():
    pins = binder_pins()
    to_dists = metadata.packages_distributions()
    third_party = sorted(m for m in chapter_imports()
                         if m not in sys.stdlib_module_names and m != "cnnbook")
    assert {"numpy", "matplotlib"} <= set(third_party)
    unpinned = []
    for module in third_party:
        dists = [canonical(d) for d in to_dists.get(module, [module])]
        if not any(d in pins for d in dists):
            unpinned.append(f"{module} (distribution {', '.join(dists)})")
    assert not unpinned, "imported by a chapter but not pinned in binder/requirements.txt: " + \
        ", ".join(unpinned)


FIXTURE_CHAPTER = CHAPTER_HEADER + textwrap.dedent(
    """\

    # A fixture chapter

    ```{code-cell} ipython3
    import cnnbook
    print(2 + 2)
    ```
    """
)


def fixture_chapter(folder):
    """A one-cell chapter that imports cnnbook, with its reference (made in this environment)."""
    from chapters import reference_json, reference_path
    from refresh_outputs import execute

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fixture.md"
    path.write_text(FIXTURE_CHAPTER)
    ref = reference_path(path)
    ref.parent.mkdir(exist_ok=True)
    ref.write_text(reference_json(execute(path)))
    return path


def run_harness(chapter, *options, env=None):
    """``python -m pytest CHAPTER`` through the nbval harness, as tools/test.sh runs the book."""
    env = dict(os.environ if env is None else env, PYTHONPATH=str(TOOLS))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "nbval_chapters", "-p", "no:cacheprovider", "-q",
         "--rootdir", chapter.parent, chapter, *options],
        capture_output=True, text=True, env=env, cwd=chapter.parent)


@pytest.fixture(scope="module")
def binder(tmp_path_factory):
    """What Binder makes, built by the harness's ``--binder-env`` (the way tools/test.sh runs
    every chapter): a fresh venv from the pins (plus nbclient, which Binder's Jupyter base
    image provides), then binder/postBuild run in a copy of the repository with that venv
    first on PATH and its own HOME. A fixture chapter runs in its kernel on the way.
    Returns (BinderEnv, the harness run)."""
    from chapters import BinderEnv

    if not WHEELHOUSE.is_dir():
        skip_or_fail(f"{WHEELHOUSE} is missing: run `bash tools/setup.sh` to fetch the wheels "
                     "offline tests install")
    base = tmp_path_factory.mktemp("binder")
    chapter = fixture_chapter(base / "book")
    proc = run_harness(chapter, "--binder-env", base / "env")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return BinderEnv(base / "env"), proc


@pytest.mark.slow
def test_binder_env_runs_chapters_with_the_installed_package(binder):
    """--binder-env built the environment, ran the chapter in its kernel, and that kernel
    imported cnnbook as postBuild installed it (the harness asks the kernel after the last
    cell and fails the chapter otherwise), not from the repository's src."""
    env, proc = binder
    assert "1 passed" in proc.stdout
    assert f"Binder environment built in {env.base}" in proc.stdout
    kernels = [line for line in proc.stdout.splitlines() if line.startswith("  cnnbook-binder: ")]
    assert len(kernels) == 1, proc.stdout
    site = next(env.prefix.glob("lib/python*/site-packages"))
    assert f": {env.python}, cnnbook from {site / 'cnnbook'} (1 chapter)" in kernels[0]


@pytest.mark.slow
def test_postbuild_installs_the_package_the_student_editions_and_jupytext(binder):
    env, _ = binder
    code = "import cnnbook, jupytext; print(cnnbook.__file__)"
    assert str(env.prefix) in run([env.python, "-c", code], cwd=env.home).stdout  # not src
    from chapters import notebook_chapters

    made = sorted(p.stem for p in (env.repo / "_build" / "exercises").glob("*.ipynb"))
    assert made == sorted(p.stem for p in notebook_chapters())
    config = (env.home / ".jupyter" / "jupyter_server_config.py").read_text()
    assert "jupytext.TextFileContentsManager" in config
    settings = env.home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / \
        "docmanager-extension"
    viewers = json.loads((settings / "plugin.jupyterlab-settings").read_text())["defaultViewers"]
    assert viewers["markdown"] == "Jupytext Notebook"


@pytest.mark.slow
def test_binder_requirements_execute_a_chapter(binder, tmp_path):
    env, _ = binder
    chapter = tmp_path / "gradient_checking.md"
    shutil.copy(ROOT / "book" / "gradient_checking.md", chapter)
    # What opening the chapter on Binder and running all cells does: jupytext reads the
    # .md as a notebook, a python3 kernel of that environment executes it.
    script = (
        "import jupytext, nbclient, nbformat\n"
        "nb = jupytext.read('gradient_checking.md')\n"
        "nbclient.NotebookClient(nb, kernel_name='python3', timeout=600).execute()\n"
        "nbformat.write(nb, 'gradient_checking.ipynb')\n"
    )
    run([env.python, "-c", script], cwd=tmp_path)
    import nbformat

    nb = nbformat.read(tmp_path / "gradient_checking.ipynb", as_version=4)
    codes = [c for c in nb.cells if c.cell_type == "code"]
    assert codes and all(c.execution_count for c in codes)
    errors = [o for c in codes for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


def test_harness_fails_a_chapter_whose_kernel_runs_other_code(tmp_path):
    """A kernel other than this environment's must import cnnbook from its own environment.
    This environment's python3 kernelspec, named with --chapter-kernel, gets the repository's
    src on PYTHONPATH from the harness: the chapter's outputs match, the run fails."""
    chapter = fixture_chapter(tmp_path / "book")
    proc = run_harness(chapter, "--chapter-kernel", "python3")
    assert proc.returncode != 0, proc.stdout
    assert "1 passed, 1 error" in proc.stdout, proc.stdout
    assert f"imported cnnbook from {ROOT / 'src' / 'cnnbook'}, not from the kernel's " \
           f"environment {sys.prefix}" in proc.stdout, proc.stdout


def test_binder_env_and_chapter_kernel_exclude_each_other(tmp_path):
    chapter = tmp_path / "fixture.md"
    chapter.write_text(FIXTURE_CHAPTER)
    proc = run_harness(chapter, "--binder-env", tmp_path / "env", "--chapter-kernel", "python3")
    assert proc.returncode == 4 and "cannot be combined with --chapter-kernel" in proc.stderr


def test_binder_env_refuses_to_clear_a_folder_it_did_not_make(tmp_path):
    from chapters import ChapterError, make_binder_env

    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "todo.txt").write_text("mine")
    with pytest.raises(ChapterError, match="refusing to clear .*notes"):
        make_binder_env(keep, wheelhouse=tmp_path)
    with pytest.raises(ChapterError, match="holds the repository"):
        make_binder_env(ROOT, wheelhouse=tmp_path)
    with pytest.raises(ChapterError, match="nowhere.*is missing: run `bash tools/setup.sh`"):
        make_binder_env(tmp_path / "env", wheelhouse=tmp_path / "nowhere")
    assert (keep / "todo.txt").read_text() == "mine"


def test_ci_runs_every_chapter_in_the_binder_environment():
    """The nbval stage of tools/test.sh executes the book (every chapter, the long training
    run included) with --binder-env: the one execution of each chapter in CI checks its
    outputs in the environment a reader's Binder session has."""
    stages = [line for line in (ROOT / "tools" / "test.sh").read_text().splitlines()
              if line.startswith("stage nbval ")]
    assert len(stages) == 1, "tools/test.sh must have one `stage nbval ...` line"
    words = stages[0].split()
    assert words[words.index("pytest") + 1] == "book", stages[0]  # the whole book, by _toc.yml
    assert "--binder-env" in words, stages[0]


def test_pins_cover_the_notebook_stack():
    for name in ("numpy", "matplotlib", "jupytext", "ipykernel"):
        assert name in binder_pins()
