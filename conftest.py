"""pytest glue of the book.

``python -m pytest book/NAME.md`` executes a MyST chapter with nbval in a fresh
``python3`` kernel and compares every code cell's outputs with the chapter's
reference outputs (``book/_reference/NAME.ipynb``); ``python -m pytest book/``
does every chapter.  The collector lives in ``tools/nbval_chapters.py``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))

pytest_plugins = ["nbval_chapters"]
