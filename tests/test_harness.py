"""The nbval harness bites: on a tiny fixture chapter, a wrong reference output fails
the run, a correct one passes, and a stale reference is refused with the refresh command."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from _support import CHAPTER_HEADER, ROOT, TOOLS

from chapters import reference_json, reference_path
from refresh_outputs import execute

CHAPTER = CHAPTER_HEADER + textwrap.dedent(
    """\

    # A fixture chapter

    Two plus two:

    ```{code-cell} ipython3
    print(2 + 2)
    ```

    A value and an address, which the sanitizer masks:

    ```{code-cell} ipython3
    import cnnbook
    print(object())
    cnnbook.__version__ == cnnbook.__version__
    ```
    """
)


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    book = tmp_path_factory.mktemp("book")
    path = book / "fixture.md"
    path.write_text(CHAPTER)
    ref = reference_path(path)
    ref.parent.mkdir()
    ref.write_text(reference_json(execute(path)))
    return path


def run_pytest(path):
    env = dict(os.environ, PYTHONPATH=str(TOOLS))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "nbval_chapters", "-p", "no:cacheprovider", "-q",
         "--rootdir", path.parent, path],
        capture_output=True, text=True, env=env, cwd=path.parent,
    )


def edit_reference(path, change):
    ref = reference_path(path)
    data = json.loads(ref.read_text())
    change(data)
    ref.write_text(json.dumps(data))


def test_reference_is_recorded(chapter):
    data = json.loads(reference_path(chapter).read_text())
    outputs = [c["outputs"] for c in data["cells"]]
    assert "".join(outputs[0][0]["text"]) == "4\n"
    assert data["metadata"]["kernelspec"]["name"] == "python3"


def test_correct_reference_passes(chapter):
    proc = run_pytest(chapter)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_wrong_printed_value_fails(chapter):
    good = reference_path(chapter).read_text()
    try:
        edit_reference(chapter, lambda d: d["cells"][0]["outputs"][0].update(text=["5\n"]))
        proc = run_pytest(chapter)
        assert proc.returncode == 1, proc.stdout
        assert "1 failed, 1 passed" in proc.stdout and "Cell outputs differ" in proc.stdout
    finally:
        reference_path(chapter).write_text(good)


def test_wrong_result_value_fails(chapter):
    good = reference_path(chapter).read_text()
    try:
        edit_reference(chapter, lambda d: d["cells"][1]["outputs"][-1]["data"].update({"text/plain": ["False"]}))
        proc = run_pytest(chapter)
        assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout
    finally:
        reference_path(chapter).write_text(good)


def test_stale_reference_is_refused(chapter):
    original = chapter.read_text()
    try:
        chapter.write_text(original.replace("print(2 + 2)", "print(2 + 3)"))
        proc = run_pytest(chapter)
        assert proc.returncode != 0
        assert "are stale" in proc.stdout and "tools/refresh_outputs.py" in proc.stdout, proc.stdout
    finally:
        chapter.write_text(original)


def test_prose_changes_do_not_make_the_reference_stale(chapter):
    original = chapter.read_text()
    try:
        chapter.write_text(original.replace("Two plus two:", "Two plus two, as a warm-up:"))
        proc = run_pytest(chapter)
        assert proc.returncode == 0, proc.stdout
    finally:
        chapter.write_text(original)


def test_missing_reference_is_refused(tmp_path):
    path = tmp_path / "lonely.md"
    path.write_text(CHAPTER)
    proc = run_pytest(path)
    assert proc.returncode != 0 and "has no reference outputs" in proc.stdout, proc.stdout


def test_kernels_use_the_avx2_code_paths_unless_told_otherwise(monkeypatch):
    """On an x86-64 machine with AVX2, a chapter's kernel gets OpenBLAS's Haswell kernels and
    NumPy without its AVX-512 loops (the references' round-off); a variable set by the user
    wins; a machine without AVX2 gets neither."""
    import chapters

    monkeypatch.setattr(chapters, "_has_avx2", lambda: True)
    env = chapters.kernel_environment(base={})
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["OPENBLAS_NUM_THREADS"] == "2"
    assert "X86_V4" in env["NPY_DISABLE_CPU_FEATURES"].split()
    env = chapters.kernel_environment(base={"OPENBLAS_CORETYPE": "SkylakeX"})
    assert env["OPENBLAS_CORETYPE"] == "SkylakeX"
    monkeypatch.setattr(chapters, "_has_avx2", lambda: False)
    env = chapters.kernel_environment(base={})
    assert "OPENBLAS_CORETYPE" not in env and "NPY_DISABLE_CPU_FEATURES" not in env
