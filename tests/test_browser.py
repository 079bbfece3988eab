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


@pytest.mark.browser
def test_api_reference_and_chapters_link_to_each_other():
    """The built API pages link every "Explained in" line to an existing section anchor of its
    chapter, the chapters' exported-cell labels link to existing reference entries, and the
    search index knows the functions."""
    import re

    html = ROOT / "_build" / "html" / "book"
    if not (html / "api").is_dir():
        skip_or_fail("no built API reference: run `jupyter-book build .` first")
    to_chapters, to_api, bad = 0, 0, []
    for page in sorted((html / "api").glob("*.html")):
        for target, anchor in re.findall(r'href="(\.\./\w+\.html)#([\w-]+)"', page.read_text()):
            to_chapters += 1
            if f'id="{anchor}"' not in (page.parent / target).resolve().read_text():
                bad.append(f"{page.name} -> {target}#{anchor}")
    for page in sorted(html.glob("*.html")):
        for target, anchor in re.findall(r'href="(api/\w+\.html)#([\w.]+)"', page.read_text()):
            to_api += 1
            if f'id="{anchor}"' not in (html / target).read_text():
                bad.append(f"{page.name} -> {target}#{anchor}")
    assert not bad, bad
    assert to_chapters > 100 and to_api > 100, (to_chapters, to_api)
    index = (ROOT / "_build" / "html" / "searchindex.js").read_text()
    for name in ("affine_forward", "conv_forward_naive", "FastConvNet", "sgd_nesterov"):
        assert name in index, name
