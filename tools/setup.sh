#!/usr/bin/env bash
# Set up everything the book needs, on a fresh machine or again (idempotent):
#   - a virtual environment in .venv with cnnbook (editable) and the book's tools,
#     the runtime libraries at the versions pinned in binder/requirements.txt,
#   - .wheelhouse/: the wheels that the offline install tests use (fresh venvs
#     for `pip install .` and for the Binder requirements),
#   - Debian's chromium for the browser test (installed when running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# Under the Binder pins: CI verifies the reference outputs with exactly the versions a
# reader's Binder session gets (tests/test_binder.py keeps the two in step).
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" \
  -c binder/requirements.txt
.venv/bin/python -m pip download -q --disable-pip-version-check -d .wheelhouse \
  "hatchling>=1.18" -r binder/requirements.txt nbclient

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing; the browser test will be skipped (install Debian's 'chromium')" >&2
  fi
fi
echo "setup: ready (.venv/bin/python: $(.venv/bin/python --version))"
