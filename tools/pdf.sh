#!/usr/bin/env bash
# The PDF edition: the whole book as one PDF, _build/pdf/cnnbook.pdf, offline.
#   bash tools/pdf.sh [--collapsed show|omit] [--paper A4|Letter] [--out PATH]
# Works on a fresh clone (it sets up .venv if needed) and right after tools/build.sh.
# How, and why this way: Jupyter Book's single-page HTML build of the book, printed by Debian's
# Chromium (the browser of the browser check) once MathJax has typeset the math; pdflatex needs a
# TeX installation the machines lack, and jupyter-book's pdfhtml builder downloads a Chromium of
# its own (details at the top of tools/pdf.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}  # another virtual environment with the dev extra, e.g. a shared one
if [ ! -x "$VENV/bin/python" ]; then
  [ "$VENV" = .venv ] || { echo "pdf: no Python in $VENV" >&2; exit 1; }
  bash tools/setup.sh
fi
PY=$VENV/bin/python
# pypdf reads the page numbers back; in the dev extra, installed here too for older setups.
"$PY" -c "import pypdf" 2>/dev/null ||
  "$PY" -m pip install -q --disable-pip-version-check "pypdf>=4"
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  bash tools/setup.sh  # installs Debian's chromium when run as root
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package
"$PY" tools/tangle.py
start=$SECONDS
"$PY" tools/pdf.py "$@"
echo "pdf: done in $((SECONDS - start)) s"
