"""Binder: the pins in binder/requirements.txt are the versions of the environment the
tests run in (the one CI verifies the reference outputs with), every library a chapter
imports is pinned, and a fresh venv made only from those pins (plus the package, installed
as binder/postBuild does, and nbclient, which Binder's Jupyter base image provides)
runs the chapters and prints what their reference outputs hold."""
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

from _support import ROOT, WHEELHOUSE, clean_env, fresh_venv, pip_offline, run

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


# The one chapter left out of the Binder run: its 16-epoch training takes ~24 minutes on two
# cores, and the nbval stage of CI already runs it in the pinned environment.
NOT_ON_BINDER_RUN = {"fast_training"}


@pytest.fixture(scope="module")
def binder(tmp_path_factory):
    """What Binder makes, offline from .wheelhouse: a fresh venv from the pins (plus nbclient,
    which Binder's Jupyter base image provides), then binder/postBuild run in a copy of the
    repository with that venv first on PATH and its own HOME. Returns (python, repo, home)."""
    base = tmp_path_factory.mktemp("binder")
    py = fresh_venv(base / "venv")
    pip_offline(py, "-r", REQUIREMENTS, "nbclient")
    repo, home = base / "repo", base / "home"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".wheelhouse", "_build", ".hypothesis", "__pycache__"))
    home.mkdir()
    env = clean_env(PATH=f"{py.parent}{os.pathsep}{os.environ['PATH']}", HOME=str(home),
                    PIP_NO_INDEX="1", PIP_FIND_LINKS=str(WHEELHOUSE),
                    PIP_DISABLE_PIP_VERSION_CHECK="1")
    run(["bash", repo / "binder" / "postBuild"], cwd=repo, env=env)
    return py, repo, home


@pytest.fixture(scope="module")
def binder_python(binder):
    return binder[0]


@pytest.mark.slow
def test_postbuild_installs_the_package_the_student_editions_and_jupytext(binder):
    py, repo, home = binder
    code = "import cnnbook, jupytext; print(cnnbook.__file__)"
    assert str(py.parent.parent) in run([py, "-c", code], cwd=home).stdout  # installed, not src
    from chapters import notebook_chapters

    made = sorted(p.stem for p in (repo / "_build" / "exercises").glob("*.ipynb"))
    assert made == sorted(p.stem for p in notebook_chapters())
    config = (home / ".jupyter" / "jupyter_server_config.py").read_text()
    assert "jupytext.TextFileContentsManager" in config
    settings = home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "docmanager-extension"
    viewers = json.loads((settings / "plugin.jupyterlab-settings").read_text())["defaultViewers"]
    assert viewers["markdown"] == "Jupytext Notebook"


@pytest.mark.slow
def test_binder_requirements_execute_a_chapter(binder_python, tmp_path):
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
    run([binder_python, "-c", script], cwd=tmp_path)
    import nbformat

    nb = nbformat.read(tmp_path / "gradient_checking.ipynb", as_version=4)
    codes = [c for c in nb.cells if c.cell_type == "code"]
    assert codes and all(c.execution_count for c in codes)
    errors = [o for c in codes for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


@pytest.mark.slow
def test_binder_session_prints_what_the_book_prints(binder_python, tmp_path):
    """Every chapter but the long training run, executed by a kernel of the Binder
    environment (its pinned libraries and the package as postBuild installs it, not the
    repository's src), is compared with the reference outputs by the same nbval harness,
    with the same sanitizers, as the chapters' own test run."""
    from chapters import notebook_chapters

    share = tmp_path / "share" / "jupyter"
    run([binder_python, "-m", "ipykernel", "install", "--prefix", tmp_path,
         "--name", "cnnbook-binder", "--display-name", "cnnbook on Binder"])
    spec = share / "kernels" / "cnnbook-binder" / "kernel.json"
    kernel = json.loads(spec.read_text())
    kernel["env"] = {"PYTHONPATH": ""}  # import the installed cnnbook, as on Binder
    spec.write_text(json.dumps(kernel))
    names = [p for p in notebook_chapters() if p.stem not in NOT_ON_BINDER_RUN]
    assert len(names) >= 14
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *map(str, names), "-q", "-p", "no:cacheprovider",
         "--chapter-kernel", "cnnbook-binder"],
        cwd=ROOT, env=clean_env(JUPYTER_PATH=str(share)), capture_output=True, text=True)
    assert proc.returncode == 0, (
        "a chapter run by the Binder environment's kernel prints something else than the book:\n"
        + proc.stdout[-6000:] + proc.stderr[-2000:])
    assert re.search(r"\b\d+ passed", proc.stdout) and " failed" not in proc.stdout


def test_pins_cover_the_notebook_stack():
    for name in ("numpy", "matplotlib", "jupytext", "ipykernel"):
        assert name in binder_pins()
