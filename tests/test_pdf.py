"""The PDF edition (``tools/pdf.py``, run by ``tools/pdf.sh``): the whole book as one PDF.

The module builds the PDF once (singlehtml build and two prints in Debian's Chromium, about a
minute and a half on two cores) into ``_build/pdf/cnnbook.pdf`` and checks what a reader of the
printed book needs: a sane page count, the title page with the package version, a table of
contents and bookmarks naming every chapter of ``_toc.yml`` with the page it starts on, nothing
wider than the page, math typeset by MathJax (its fonts, no TeX source left in the text), the
figures and the frames of the convolution animation, the bibliography, and no navigation chrome.

Marker ``browser``: like the browser check it needs Debian's ``/usr/bin/chromium``, so
``tools/test.sh`` runs it in its browser stage. ``CNNBOOK_PDF=path`` checks an existing PDF
instead of building one (quicker while working on the print styles).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
import yaml

from _support import ROOT, skip_or_fail

CHROMIUM = Path("/usr/bin/chromium")
PDF = ROOT / "_build" / "pdf" / "cnnbook.pdf"

pytestmark = pytest.mark.browser


def norm(text: str) -> str:
    """Text compared without white space, ligatures or TeX/Markdown markup."""
    text = unicodedata.normalize("NFKC", text)
    return re.sub(r"[\s`*{}]+", "", text).lower()


def toc_documents() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    docs = [toc["root"]]
    for part in toc["parts"]:
        docs += [c["file"] for c in part["chapters"]]
    return docs


def title_of(doc: str) -> str:
    """The chapter's title: the first ``# `` heading of its markdown."""
    text = (ROOT / f"{doc}.md").read_text(encoding="utf-8")
    m = re.search(r"^# (.+)$", text, re.MULTILINE)
    assert m, f"{doc}.md has no '# ' title"
    return m.group(1).replace("`", "").strip()


@pytest.fixture(scope="module")
def book():
    """(reader, seconds taken to build, the build's output) for the PDF edition."""
    try:
        import pypdf
    except ImportError:
        skip_or_fail("pypdf is missing: install the dev extra (bash tools/setup.sh)")
    if os.environ.get("CNNBOOK_PDF"):
        return pypdf.PdfReader(os.environ["CNNBOOK_PDF"]), None, ""
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing: the PDF edition needs Debian's chromium")
    t = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "pdf.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t
    assert proc.returncode == 0, f"tools/pdf.py failed:\n{proc.stdout}\n{proc.stderr}"
    return pypdf.PdfReader(PDF), took, proc.stdout


def outline(reader) -> dict[str, int]:
    """{bookmark title: 1-based page}, all levels."""
    found = {}

    def walk(items):
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                found[item.title] = reader.get_destination_page_number(item) + 1

    walk(reader.outline)
    return found


def page_text(reader, number: int) -> str:
    return reader.pages[number - 1].extract_text()


def fonts(page) -> set[str]:
    names = set()
    for font in (page["/Resources"].get("/Font") or {}).values():
        font = font.get_object()
        name = font.get("/BaseFont") or font.get("/FontDescriptor", {}).get("/FontName", "")
        names.add(str(name).split("+")[-1])
    return names


def images(obj) -> int:
    """Images drawn by a page or form, counted from its resources (nothing is decoded)."""
    n = 0
    for xobject in (obj["/Resources"].get("/XObject") or {}).values():
        xobject = xobject.get_object()
        if xobject.get("/Subtype") == "/Image":
            n += 1
        elif xobject.get("/Subtype") == "/Form" and "/Resources" in xobject:
            n += images(xobject)
    return n


def test_page_count_title_page_and_time(book):
    reader, took, log = book
    assert 200 <= len(reader.pages) <= 900, len(reader.pages)
    first = page_text(reader, 1)
    init = (ROOT / "src" / "cnnbook" / "__init__.py").read_text(encoding="utf-8")
    version = re.search(r'^__version__ = "(.+)"', init, re.MULTILINE).group(1)
    assert "cnnbook" in first and f"Version {version}" in first, first
    if took is not None:
        print(f"PDF built in {took:.0f} s:\n{log}")
        assert took < 300, f"tools/pdf.py took {took:.0f} s"
        # Laid out at the printed width, no code, formula, table or image sticks out.
        assert " 0 element(s) wider than the page" in log, log


def test_every_chapter_is_in_contents_and_bookmarks_and_starts_its_page(book):
    reader, _, _ = book
    marks = outline(reader)
    # The contents: from the page after the title page to the page before the preface.
    preface = marks[title_of(toc_documents()[0])]
    assert marks["Contents"] == 2 < preface, (marks["Contents"], preface)
    contents = norm("".join(page_text(reader, n) for n in range(2, preface)))
    for doc in toc_documents():
        title = title_of(doc)
        assert title in marks, f"no bookmark for {doc} ({title!r}): {sorted(marks)}"
        start = marks[title]
        assert norm(title) in norm(page_text(reader, start)), (doc, start)
        # The contents line: the title followed (after the dot leaders) by its page number.
        assert re.search(re.escape(norm(title)) + r"\.*" + str(start) + r"(?!\d)", contents), \
            f"contents lack {title!r} on page {start}"
    pages = [marks[title_of(d)] for d in toc_documents()]
    assert pages == sorted(pages) and len(set(pages)) == len(pages), pages


def test_math_is_typeset_not_tex(book):
    reader, _, _ = book
    marks = outline(reader)
    start = marks[title_of("book/gradient_checking")]
    # The chapter's first display formula, the chain rule: a fraction of partial derivatives
    # and a sum, set in MathJax's fonts.
    for number in range(start, start + 3):
        if "∂" in page_text(reader, number):
            break
    else:
        pytest.fail("no rendered ∂ in the first pages of the gradient checking chapter")
    text = page_text(reader, number)
    assert "∑" in text, text
    assert any(f.startswith("MathJax_") for f in fonts(reader.pages[number - 1])), \
        fonts(reader.pages[number - 1])
    with_math = sum(any(f.startswith("MathJax_") for f in fonts(p)) for p in reader.pages)
    assert with_math > len(reader.pages) // 4, with_math
    # No TeX source left in the prose of a chapter full of math.
    conv = marks[title_of("book/convolution")]
    for number in range(conv, conv + 8):
        text = page_text(reader, number)
        for tex in (r"\(", r"\)", r"\[", r"$$", r"\frac", r"\sum", r"\partial", r"\mathrm"):
            assert tex not in text, f"raw TeX {tex!r} on page {number}: {text[:500]}"


def test_figures_and_animation_frames_are_embedded(book):
    reader, _, _ = book
    per_page = [images(p) for p in reader.pages]
    assert sum(per_page) >= 30, sum(per_page)
    marks = outline(reader)
    conv, pool = marks[title_of("book/convolution")], marks[title_of("book/pooling")]
    strip = [n for n in range(conv, pool) if "frames of the animation" in page_text(reader, n)]
    assert strip, "no frame strip of the convolution animation"
    assert per_page[strip[0] - 1] >= 6, per_page[strip[0] - 1]


def test_bibliography_lists_the_references(book):
    reader, _, _ = book
    marks = outline(reader)
    start = marks["Bibliography"]
    end = min(p for p in marks.values() if p > start)
    text = norm("".join(page_text(reader, n) for n in range(start, end)))
    bib = (ROOT / "references.bib").read_text(encoding="utf-8")
    years = re.findall(r"^\s*year\s*=\s*[{\"]?(\d{4})", bib, re.MULTILINE | re.IGNORECASE)
    surnames = re.findall(r"^\s*author\s*=\s*[{\"]\s*\{?([^,{}]+?)\}?\s*,", bib,
                          re.MULTILINE | re.IGNORECASE)
    assert len(surnames) >= 40, surnames
    missing = [s for s in surnames if norm(s) not in text]
    assert not missing, f"first authors missing from the bibliography: {missing}"
    assert len(years) >= 40


def test_no_navigation_chrome_or_placeholders(book):
    reader, _, _ = book
    sample = [1, 2, 3] + sorted(outline(reader).values())[:12]
    for number in sample:
        text = page_text(reader, number)
        for chrome in ("Skip to main content", "Ctrl+K", "Show code cell source",
                       "(p. 000)"):
            assert chrome not in text, f"{chrome!r} on page {number}"
