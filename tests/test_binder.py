"""Binder: a fresh venv made only from binder/requirements.txt (plus the package,
installed as binder/postBuild does, and nbclient, which Binder's Jupyter base image
provides) executes a chapter."""
import shutil

import pytest

from _support import ROOT, fresh_venv, pip_offline, run


@pytest.mark.slow
def test_binder_requirements_execute_a_chapter(tmp_path):
    py = fresh_venv(tmp_path / "venv")
    pip_offline(py, "-r", ROOT / "binder" / "requirements.txt", "nbclient")
    pip_offline(py, "--no-deps", ROOT)  # what binder/postBuild does
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
    run([py, "-c", script], cwd=tmp_path)
    import nbformat

    nb = nbformat.read(tmp_path / "gradient_checking.ipynb", as_version=4)
    codes = [c for c in nb.cells if c.cell_type == "code"]
    assert codes and all(c.execution_count for c in codes)
    errors = [o for c in codes for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


def test_postbuild_installs_package_and_jupytext_config():
    text = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install" in text and "jupytext" in text
    reqs = (ROOT / "binder" / "requirements.txt").read_text()
    for name in ("numpy", "matplotlib", "jupytext", "ipykernel"):
        assert name in reqs
