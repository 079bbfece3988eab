"""pytest glue of the book.

``python -m pytest book/NAME.md`` executes a MyST chapter with nbval in a fresh
``python3`` kernel and compares every code cell's outputs with the chapter's
reference outputs (``book/_reference/NAME.ipynb``); ``python -m pytest book/``
does every chapter.  The collector lives in ``tools/nbval_chapters.py``.

Tests marked ``chapters`` execute chapters once more (``tests/test_other_copy.py``):
``tools/test.sh`` runs them in a stage of their own after the nbval stage
(``pytest tests -m chapters``), and its unit stage leaves them out.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))

pytest_plugins = ["nbval_chapters"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "chapters: executes book chapters (tools/test.sh runs these in their own "
                   "stage, `pytest tests -m chapters`, not in the unit stage)")
