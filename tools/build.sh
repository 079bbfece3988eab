#!/usr/bin/env bash
# The book's main job, on a fresh machine: set everything up, tangle the package
# from the chapters, and build the HTML book into _build/html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/python tools/tangle.py
.venv/bin/jupyter-book build . -W -n --keep-going
echo "build: open _build/html/index.html"
