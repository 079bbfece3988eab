"""Reference outputs that know their dataset, on a fixture chapter and tiny CIFAR-10 copies.

The fixture chapter has a data-independent cell, a cell tagged ``data-dependent`` that loads
CIFAR-10, prints statistics and asserts a floor, and another data-independent cell. Its
reference is made on copy A. Then:

- on copy A every cell is compared strictly: a changed digit in the data cell fails;
- on copy B (some pixels one grey level brighter) the data cell is compared with its numbers
  sanitized and passes, while a changed digit in a data-independent cell still fails;
- on copy C (dark images) the data cell's floor does not hold: the run fails with the assertion's
  message;
- the references refuse to be made from a chapter whose tags do not match what it reads.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _support import CHAPTER_HEADER, TOOLS
from test_data import make_cifar

from chapters import ChapterError, reference_json, reference_path
from refresh_outputs import execute

CHAPTER = CHAPTER_HEADER + textwrap.dedent(
    """\

    # A chapter that reads CIFAR-10

    ```{code-cell} ipython3
    print("two and two make", 2 + 2)
    ```

    ```{code-cell} ipython3
    :tags: [data-dependent]

    from cnnbook.data import cifar10_fingerprint, load_cifar10

    X_train, y_train, X_test, y_test = load_cifar10()
    print(f"copy {cifar10_fingerprint()}: mean pixel {X_train.mean():.3f}, {len(X_train)} images")
    assert X_train.mean() > 50, f"the mean pixel {X_train.mean():.1f} is not above the floor 50"
    ```

    ```{code-cell} ipython3
    print("forty", 40 + 2)
    ```
    """
)


def changed_copy(folder, target, change):
    """A copy of ``folder`` whose batches' ``data`` arrays are replaced by ``change(data)``."""
    import pickle
    import shutil

    shutil.copytree(folder, target)
    for path in target.iterdir():
        if path.name.startswith(("data_batch", "test_batch")):
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            batch["data"] = change(batch["data"])
            with open(path, "wb") as f:
                pickle.dump(batch, f, protocol=2)
    return target


def brighter(data):
    """Every 3rd image one grey level brighter."""
    data = data.copy()
    data[::3] = np.minimum(data[::3].astype(np.int16) + 1, 255).astype(np.uint8)
    return data


def darker(data):
    """All images nearly black."""
    return data // 16


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    base = tmp_path_factory.mktemp("copies")
    a, _ = make_cifar(base / "a")
    return {"a": a, "b": changed_copy(a, base / "b", brighter),
            "c": changed_copy(a, base / "c", darker)}


@pytest.fixture(scope="module")
def chapter(tmp_path_factory, copies):
    book = tmp_path_factory.mktemp("book")
    path = book / "reads_data.md"
    path.write_text(CHAPTER)
    ref = reference_path(path)
    ref.parent.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNBOOK_CIFAR10_DIR", str(copies["a"]))
        ref.write_text(reference_json(execute(path)))
    return path


def run_pytest(path, data_dir):
    env = dict(os.environ, PYTHONPATH=str(TOOLS), CNNBOOK_CIFAR10_DIR=str(data_dir))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "nbval_chapters", "-p", "no:cacheprovider", "-q",
         "--rootdir", path.parent, path],
        capture_output=True, text=True, env=env, cwd=path.parent,
    )


def edited(path, cell, change):
    """Context: the reference of ``path`` with code cell ``cell``'s first output text changed."""
    class Edit:
        def __enter__(self):
            self.good = reference_path(path).read_text()
            data = json.loads(self.good)
            out = data["cells"][cell]["outputs"][0]
            out["text"] = change("".join(out["text"]))
            reference_path(path).write_text(json.dumps(data))

        def __exit__(self, *exc):
            reference_path(path).write_text(self.good)

    return Edit()


def fingerprint(folder):
    from cnnbook.data import cifar10_fingerprint

    return cifar10_fingerprint(folder)


def test_the_reference_stores_the_copy(chapter, copies):
    meta = json.loads(reference_path(chapter).read_text())["metadata"]["cnnbook"]
    assert meta["data_fingerprint"] == fingerprint(copies["a"])
    assert fingerprint(copies["b"]) != meta["data_fingerprint"]


def test_same_copy_is_compared_strictly(chapter, copies):
    proc = run_pytest(chapter, copies["a"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    assert re.search(r"reads_data\.md: 1 cells compared strictly", proc.stdout), proc.stdout


def test_same_copy_a_changed_digit_in_a_data_cell_fails(chapter, copies):
    with edited(chapter, 1, lambda t: re.sub(r"mean pixel (\d)", lambda m: "mean pixel " + str(
            (int(m[1]) + 1) % 10), t)):
        proc = run_pytest(chapter, copies["a"])
    assert proc.returncode == 1 and "1 failed, 2 passed" in proc.stdout, proc.stdout
    assert "Cell outputs differ" in proc.stdout


def test_other_copy_passes_with_numbers_sanitized(chapter, copies):
    proc = run_pytest(chapter, copies["b"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    assert "1 cells compared with numbers sanitized: the copy at hand is " + fingerprint(
        copies["b"]) in proc.stdout, proc.stdout


def test_other_copy_a_changed_digit_in_a_data_independent_cell_fails(chapter, copies):
    with edited(chapter, 2, lambda t: t.replace("42", "43")):
        proc = run_pytest(chapter, copies["b"])
    assert proc.returncode == 1 and "1 failed, 2 passed" in proc.stdout, proc.stdout
    assert "forty 43" in proc.stdout and "Cell outputs differ" in proc.stdout


def test_other_copy_a_changed_word_in_a_data_cell_fails(chapter, copies):
    with edited(chapter, 1, lambda t: t.replace("mean pixel", "median pixel")):
        proc = run_pytest(chapter, copies["b"])
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout


def test_other_copy_where_the_floor_fails(chapter, copies):
    proc = run_pytest(chapter, copies["c"])
    assert proc.returncode == 1 and "1 failed, 2 passed" in proc.stdout, proc.stdout
    assert "AssertionError" in proc.stdout and "is not above the floor 50" in proc.stdout


def test_changed_tags_make_the_reference_stale(chapter, copies):
    original = chapter.read_text()
    try:
        chapter.write_text(original.replace(':tags: [data-dependent]\n', ''))
        proc = run_pytest(chapter, copies["a"])
        assert proc.returncode != 0 and "other cells tagged 'data-dependent'" in proc.stdout
    finally:
        chapter.write_text(original)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.replace(":tags: [data-dependent]\n", ""), "no code cell is tagged"),
    (lambda s: s.replace("X_train, y_train, X_test, y_test = load_cifar10()",
                         "X_train = np.full((3, 2), 99.0)").replace(
        "from cnnbook", "import numpy as np\nfrom cnnbook").replace(
        "copy {cifar10_fingerprint()}: ", "").replace("{len(X_train)} images", "x"),
     "never loads CIFAR-10"),
])
def test_refresh_checks_the_tags(tmp_path, copies, monkeypatch, change, message):
    path = tmp_path / "tags.md"
    path.write_text(change(CHAPTER))
    monkeypatch.setenv("CNNBOOK_CIFAR10_DIR", str(copies["a"]))
    with pytest.raises(ChapterError, match=message):
        execute(path)
