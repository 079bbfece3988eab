"""The chapters that train on CIFAR-10 pass on a copy of the data other than the references'.

The test writes a second copy of the CIFAR-10 the chapters use (the images of each batch in
reverse order, and every seventh image one grey level brighter), and runs the data-dependent
chapters that fit in CI's time against it (``CHAPTERS``). Their data-dependent cells are then compared with
numbers sanitized, every other cell strictly, and every assertion in them must still hold.
What the run printed (with its slowest cells) is kept in ``_build/test-results/other-copy.txt``.
The run takes minutes: the test is marked ``chapters``, and ``tools/test.sh`` runs it in a stage
of its own (``pytest tests -m chapters``) after the nbval stage, not in the unit stage.
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from _support import ROOT, skip_or_fail

from chapters import kernel_environment

# Every chapter with data-dependent cells that fits in CI's time (a long training chapter would
# double its run time: it is checked by its own floors on the copy CI has).
CHAPTERS = ["book/cifar10.md", "book/fc_nets.md", "book/normalization.md", "book/dropout.md",
            "book/convnet.md", "book/architectures.md"]


def other_copy(source, target):
    """Write ``target``: ``source`` with each batch reversed and every 7th image brightened."""
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        blob = path.read_bytes()
        if path.name.startswith(("data_batch", "test_batch")):
            batch = pickle.loads(blob, encoding="latin1")
            for key in ("data", "labels", "filenames"):
                batch[key] = batch[key][::-1]
            data = np.array(batch["data"])
            data[::7] = np.minimum(data[::7].astype(np.int16) + 1, 255).astype(np.uint8)
            batch["data"] = data
            blob = pickle.dumps(batch, protocol=2)
        (target / path.name).write_bytes(blob)
    return target


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    from cnnbook.data import DatasetUnavailableError, cifar10_fingerprint, find_cifar10

    env = kernel_environment()
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        source = find_cifar10(download=False)
    except (OSError, DatasetUnavailableError) as exc:
        skip_or_fail(f"no CIFAR-10 copy to derive another one from: {exc}")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    target = other_copy(source, tmp_path_factory.mktemp("other") / "cifar-10-batches-py")
    assert cifar10_fingerprint(target) != cifar10_fingerprint(source)
    return source, target


@pytest.mark.chapters  # minutes: tools/test.sh runs it in its own stage, after the nbval stage
def test_data_dependent_chapters_pass_on_another_copy(copies):
    source, target = copies
    env = dict(os.environ, CNNBOOK_CIFAR10_DIR=str(target))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=10",
         *CHAPTERS],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    log = ROOT / "_build" / "test-results" / "other-copy.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"CNNBOOK_CIFAR10_DIR={target}\n\n{proc.stdout}\n{proc.stderr}")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    modes = {line.split(":")[0].strip(): line for line in proc.stdout.splitlines()
             if line.startswith("  book/")}
    for chapter in CHAPTERS:
        assert "compared with numbers sanitized" in modes.get(chapter, ""), proc.stdout[-3000:]


def test_ci_runs_the_chapter_tests_in_their_own_stage():
    """tools/test.sh leaves the tests that execute chapters out of its unit stage and runs them
    in a stage of their own: every test of tests/ runs in CI, the unit stage stays fast."""
    stages = {line.split()[1]: line for line in (ROOT / "tools" / "test.sh").read_text()
              .splitlines() if line.startswith("stage ")}
    assert "not chapters" in stages.get("unit-tests", ""), stages
    assert "-m chapters" in stages.get("other-copy", ""), stages
