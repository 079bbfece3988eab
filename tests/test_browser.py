"""What readers see: the built HTML book checked in headless Chromium.

Runs ``tools/browser_check.py`` (every toc page, index.html and the search
page: no console/page errors, no failed or non-local requests, math typeset by
MathJax, images loaded, complete sidebar).  Needs the built book
(``jupyter-book build .``) and Debian's ``/usr/bin/chromium``.
"""
import subprocess
import sys
from pathlib import Path

import pytest

from _support import ROOT, skip_or_fail

CHROMIUM = Path("/usr/bin/chromium")
BUILT = ROOT / "_build" / "html" / "index.html"


@pytest.mark.browser
def test_built_book_in_browser():
    if not BUILT.is_file():
        skip_or_fail(f"no built book ({BUILT.relative_to(ROOT)} is missing): run `jupyter-book build .` first")
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing: the browser check needs Debian's chromium")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "browser_check.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + (f"\n--- stderr\n{proc.stderr}" if proc.stderr.strip() else "")
    assert proc.returncode == 0, f"browser_check.py failed (exit {proc.returncode}):\n{output}"
    assert "browser_check: " in proc.stdout, output
