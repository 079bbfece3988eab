"""Helpers shared by the tests."""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
WHEELHOUSE = ROOT / ".wheelhouse"

if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))


# The front matter every chapter starts with (jupytext MyST notebook, python3 kernel).
CHAPTER_HEADER = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def skip_or_fail(reason: str):
    """Skip, unless CNNBOOK_REQUIRE_ALL is set (as tools/test.sh and CI do): then fail."""
    if os.environ.get("CNNBOOK_REQUIRE_ALL"):
        pytest.fail(reason + " (CNNBOOK_REQUIRE_ALL is set, so this is an error)")
    pytest.skip(reason)


def clean_env(**extra) -> dict:
    """The environment without anything that would let a fresh venv see this repository."""
    from chapters import isolated_environ

    return isolated_environ(**extra)


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    """Run cmd in clean_env() (unless env is given); an AssertionError if it fails."""
    from chapters import run_checked

    return run_checked(cmd, AssertionError, **kwargs)


def fresh_venv(path: Path) -> Path:
    """A new virtual environment (with pip, no system packages); returns its python."""
    if not WHEELHOUSE.is_dir():
        skip_or_fail(f"{WHEELHOUSE} is missing: run `bash tools/setup.sh` to fetch the wheels offline tests install")
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


def pip_offline(python: Path, *args):
    return run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                "--no-index", "--find-links", WHEELHOUSE, *args])
