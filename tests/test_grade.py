"""The grader of the student edition (cnnbook.grade, book/grading.md): which exercises a notebook
has, how a failure is attributed (traced in the kernel, on tiny notebooks), and the command on a
real chapter's student edition: untouched, solved, and with one exercise broken."""
import os
import subprocess
import sys

import jupytext
import nbformat
import pytest

from _support import ROOT  # noqa: F401  (puts tools/ on the path)

import make_exercises as mx
from chapters import BOOK, code_cells, kernel_environment, read_chapter

from cnnbook import grade


def notebook(text):
    """A notebook from jupytext's percent format (cells tagged with `# %% tags=[...]`)."""
    return jupytext.reads(text, fmt="py:percent")


def verdicts(text, **kwargs):
    return grade.grade(notebook(text), **kwargs)


# ---- which exercises a notebook has (no kernel) ------------------------------------------------

def test_exercise_cell_finds_functions_methods_stubs_and_module():
    found = grade.exercise_cell(0, '''\
class Net:
    """A net."""

    def __init__(self):
        """Set up."""
        raise NotImplementedError("Net.__init__: exercise; write its body")

    def _helper(self):
        return 1


@add_to_class(Net)
def loss(self, X):
    """The loss."""
    return 0.0


def forward(x):
    raise NotImplementedError("forward: exercise")


def _check(x):
    pass

use_my_code('cnnbook.classifiers', ['Net', 'forward', '_check'])
''')
    assert found.exercises == ["Net.__init__", "Net.loss", "forward"]
    assert found.stubs == {"Net.__init__", "forward"}
    assert found.module == "cnnbook.classifiers"


def test_a_cell_that_does_not_parse_still_names_its_functions():
    found = grade.exercise_cell(3, "def affine(x):\n    return x +\n\ndef _private(y):\n    pass\n")
    assert found.exercises == ["affine"] and found.stubs == set() and found.module is None


def test_a_cell_names_a_method_by_its_name_and_a_constructor_by_its_class():
    assert grade._named("Net.__init__", "net = Net(2)") and grade._named("Net.loss", "n.loss(x)")
    assert not grade._named("Net.forward", "net = Net(2)")
    assert not grade._named("relu_forward", "affine_relu_forward(x)")


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="-1"):
        grade.grade(notebook("# %% tags=['exercise']\ndef f():\n    pass\n"), timeout=-1)
    with pytest.raises(ValueError, match="'slow'"):
        nb = notebook("# %% tags=['exercise']\ndef f():\n    pass\n")
        nb.metadata["mystnb"] = {"execution_timeout": "slow"}  # the chapter's own timeout
        grade.grade(nb)
    with pytest.raises(ValueError, match="no cell tagged 'exercise'"):
        grade.grade(notebook("# %%\nx = 1\n"))
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        grade.read_notebook(tmp_path / "missing.ipynb")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ValueError, match="notes.txt"):
        grade.read_notebook(tmp_path / "notes.txt")


# ---- attribution, traced in a kernel (about 2 s each) ------------------------------------------

EXERCISES = '''\
# %% tags=["exercise"]
def double(x):
    return x + x

def quadruple(x):
    return double(double(x))

def inverse(x):
    if x == 0:
        raise ZeroDivisionError("inverse: x is 0")
    return 1 / x

def cube(x):
    raise NotImplementedError("cube: exercise; write its body")

'''


def test_every_verdict_on_a_tiny_notebook():
    got, other = verdicts(EXERCISES + '''
# %%
assert double(3) == 6

# %%
assert quadruple(1) == 4 and cube(2) == 8

# %%
assert inverse(2) == 0.5

# %%
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(2) as pool:  # exercises called from threads are traced too
    assert list(pool.map(quadruple, [1, 2, 3])) == [4, 8, 12]
''')
    assert got == {"double": "passed", "quadruple": "blocked by cube", "inverse": "passed",
                   "cube": "not yet written"}
    assert not other


def test_an_error_raised_inside_an_exercise_belongs_to_the_innermost_one():
    got, _ = verdicts(EXERCISES.replace("return x + x", "return x + y") + '''
# %%
assert inverse(4) == 0.25

# %%
print(quadruple(1))
''')
    assert got["double"] == ("FAILED (code cell 3: NameError: name 'y' is not defined)")
    assert got["quadruple"] == "blocked by double"
    assert got["inverse"] == "passed" and got["cube"] == "not yet written"


def test_an_assertion_goes_to_the_exercise_its_message_or_the_cell_names():
    got, _ = verdicts(EXERCISES.replace("return x + x", "return 2 * x + 1") + '''
# %%
y = quadruple(1)
assert y == 4, f"got {y}"

# %%
result = inverse(2) + double(1)
assert result == 2.5, "double: wrong"

# %%
assert sum(f(1) for f in [globals()["inv" + "erse"]]) == 2
''')
    # cell 2: the message names no exercise, the source names quadruple (double ran inside it
    # and is not blamed); cell 3: the message names double, inverse is blocked by it; cell 4:
    # nothing named, so the one exercise it called
    assert got["quadruple"] == "FAILED (code cell 2: AssertionError: got 7)"
    assert got["double"] == "FAILED (code cell 3: AssertionError: double: wrong)"
    assert got["inverse"] == "FAILED (code cell 4: AssertionError)"


def test_a_cell_after_the_exercise_cell_that_calls_nothing_and_a_broken_exercise_cell():
    got, other = verdicts('''\
# %% tags=["exercise"]
def double(x):
    return x +

# %%
print(double(2))

# %%
assert missing == 1
''')
    assert list(got) == ["double"] and got["double"].startswith("FAILED (code cell 1: SyntaxE")
    assert [o.split(":")[0] for o in other] == ["code cell 2", "code cell 3"]


def test_methods_static_methods_and_properties_are_traced():
    got, _ = verdicts('''\
# %% tags=["exercise"]
class Net:
    def __init__(self, scale):
        self.scale = scale

    @staticmethod
    def zero():
        return 0

    @property
    def double_scale(self):
        return 3 * self.scale  # wrong

    def forward(self, x):
        if x < 0:
            raise NotImplementedError("Net.forward: negative x is not supported")
        return self.scale * x

# %%
net = Net(2)
assert net.forward(3) == 6 and Net.zero() == 0
try:
    net.forward(-1)  # a NotImplementedError on purpose, caught: not a stub
except NotImplementedError:
    pass

# %%
assert Net(1).double_scale == 2, "double_scale"
''')
    assert got == {"Net.__init__": "blocked by Net.double_scale", "Net.zero": "passed",
                   "Net.double_scale": "FAILED (code cell 3: AssertionError: double_scale)",
                   "Net.forward": "passed"}


def test_the_grader_cell_is_skipped_a_timeout_fails_and_raises_exception_is_expected():
    got, other = verdicts(EXERCISES + '''
# %%
import time
def slow(x):
    time.sleep(30)
assert slow(double(1)) is None

# %% tags=["raises-exception"]
inverse(0)

# %% tags=["grade"]
raise SystemExit("the grader must not run its own cell")

# %%
assert double(2) == 4
''', timeout=3)
    assert got["double"] == "FAILED (code cell 2: TimeoutError: the cell ran longer than 3 s)"
    assert got["inverse"] == "passed" and not other


# ---- the command on a real chapter's student edition ------------------------------------------

CHAPTER = "fc_layers"  # 8 exercises; its solved edition runs in ~3 s (gradient_checking: ~3 s)
WRONG = ("    dw = x.reshape(N, D).T @ dout", "    dw = dout.T @ x.reshape(N, D)")


def solved(path):
    """The student edition with the chapter's code back in its exercise cells (tags, SETUP,
    use_my_code and the grader cell kept)."""
    student, _ = mx.student_edition(path)
    originals = iter(code_cells(read_chapter(path)))
    for cell in student.cells:
        if cell.cell_type == "code" and not mx._added(cell):
            original = next(originals)
            if mx.STUB_TAG in cell.metadata.get("tags", []):
                use = cell.source.rstrip().splitlines()[-1]  # none in a cell of methods only
                use = "\n\n" + use if use.startswith("use_my_code(") else ""
                cell.source = original.source + use
    return student


def run_grader(nb, tmp_path, suffix=".ipynb"):
    """Write nb as CHAPTER.ipynb (or .md) and run `python -m cnnbook.grade` on it in its folder;
    returns (exit status, {exercise: verdict})."""
    path = tmp_path / f"{CHAPTER}{suffix}"
    if suffix == ".md":
        jupytext.write(nb, path, fmt="md:myst")
    else:
        nbformat.write(nb, path)
    done = subprocess.run([sys.executable, "-m", "cnnbook.grade", path.name, "--chapter",
                           CHAPTER, "--timeout", "300"], cwd=tmp_path, capture_output=True,
                          text=True, env=kernel_environment(), timeout=600)
    assert done.stdout.startswith(f"{CHAPTER}: {path.name}\n"), done.stdout + done.stderr
    table = done.stdout.split("-\n", 1)[1].split(" exercises passed")[0].splitlines()[:-1]
    return done.returncode, dict(line.split(None, 1) for line in table)


@pytest.mark.slow
def test_untouched_student_edition_is_not_yet_written(tmp_path):
    student, exercises = mx.student_edition(BOOK / f"{CHAPTER}.md")
    status, got = run_grader(student, tmp_path, ".md")
    assert status == 1
    assert got == {name: "not yet written" for name, _ in exercises}


@pytest.mark.slow
def test_solved_student_edition_passes(tmp_path):
    status, got = run_grader(solved(BOOK / f"{CHAPTER}.md"), tmp_path)
    assert set(got.values()) == {"passed"}, got
    assert len(got) == 8 and status == 0


@pytest.mark.slow
def test_one_broken_exercise_fails_where_it_is_checked_and_blocks_its_callers(tmp_path):
    nb = solved(BOOK / f"{CHAPTER}.md")
    target = next(c for c in nb.cells if "def affine_backward(" in c.source)
    assert WRONG[0] in target.source
    target.source = target.source.replace(*WRONG)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    first_check = 1 + next(i for i, c in enumerate(cells) if "affine_backward(np.ones" in c.source)
    status, got = run_grader(nb, tmp_path)
    assert status == 1
    assert got.pop("affine_backward").startswith(
        f"FAILED (code cell {first_check}: AssertionError: affine_backward: dw = ")
    # its checks also call affine_backward: blocked; the others do not: passed
    assert got == {"affine_forward": "blocked by affine_backward",
                   "relu_forward": "passed", "relu_backward": "passed",
                   "affine_relu_forward": "blocked by affine_backward",
                   "affine_relu_backward": "blocked by affine_backward",
                   "svm_loss": "passed", "softmax_loss": "passed"}


def test_the_student_edition_ends_with_the_grader_cell():
    student, _ = mx.student_edition(BOOK / f"{CHAPTER}.md")
    last = student.cells[-1]
    assert last.metadata["tags"] == [mx.GRADE_TAG] and grade._RUNS_GRADER.search(last.source)
    assert f"name = {CHAPTER!r}" in last.source and "cnnbook.grade" in mx.SETUP
    assert not grade._RUNS_GRADER.search(mx.SETUP)  # SETUP only mentions it in a comment
    preface, exercises = mx.student_edition(BOOK / "preface.md")
    assert not exercises and all(mx.GRADE_TAG not in c.metadata.get("tags", [])
                                 for c in preface.cells)
