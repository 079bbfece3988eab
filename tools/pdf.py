#!/usr/bin/env python
"""Build the whole book as one PDF: ``_build/pdf/cnnbook.pdf`` (run by ``tools/pdf.sh``).

Usage (from the repository root)::

    .venv/bin/python tools/pdf.py [--out _build/pdf/cnnbook.pdf] [--no-build]
        [--collapsed show|omit] [--paper A4|Letter]

How, and why this way (all of it works offline):

1. Jupyter Book's ``singlehtml`` builder writes the whole book, in the order of ``_toc.yml``, as
   one HTML page into ``_build/pdf/_build/singlehtml`` (its own directory: the HTML book in
   ``_build/html`` is left alone). It is the same Sphinx build as the HTML book, so the pages
   show the same reference outputs, figures, labels and bibliography.
2. Debian's Chromium (``/usr/bin/chromium``, the browser of ``tools/browser_check.py``), driven
   by playwright, opens that page from a local server (requests that would leave 127.0.0.1 are
   refused, and the build fails if there is one), waits for MathJax to typeset every formula and
   for every image, turns the page into a printed book (below) and prints it with
   ``page.pdf()``. Print styles: ``_static/cnnbook-print.css``.
3. pypdf reads back the page on which every chapter and every cross-referenced section landed;
   the table of contents and the "(p. N)" after cross-references get those numbers, and the book
   is printed again (the page numbers are placeholders of the same width in the first print, so
   nothing moves; the script checks that, and prints a third time if something did).

The other routes of the ecosystem do not work here: ``jupyter-book build --builder pdflatex``
needs a TeX installation, which the machines do not have (and LaTeX would drop the chapters' HTML
outputs, such as the convolution animation); ``--builder pdfhtml`` (Jupyter Book 1.0.4) launches
playwright's own Chromium build, a download from outside the package registries, with no way to
name Debian's, writes its single page over the HTML book in ``_build/html``, opens it through
``index.html`` where its relative links to ``_static`` and ``_images`` break (the root page lives
in ``book/``), and prints without title page, contents or page numbers.

The printed book: a title page (title, author, ``cnnbook.__version__``), a table of contents with
the parts and chapters of ``_toc.yml`` and their page numbers, every chapter on a new page, page
numbers in the footer, PDF bookmarks, no navigation chrome (the article alone is printed), code
wrapped at the right margin, the cells collapsed on the HTML pages (tag ``hide-input``) shown
(``--collapsed show``, the default: the printed book holds every line of the package) or left out
with their labels (``--collapsed omit``), the convolution animation as a strip of frames, links
to other chapters and sections as in-document links followed by their page number, links to
files of the web site (the student editions) as plain text.
"""
from __future__ import annotations

import argparse
import io
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_check import (  # noqa: E402 - the browser check's Chromium, server and waits
    CHROMIUM,
    CHROMIUM_ARGS,
    IMAGES_JS,
    WAIT_MATHJAX_JS,
    start_server,
)

REPO = Path(__file__).resolve().parent.parent
PAGE_TIMEOUT_MS = 120_000  # one page of ~4 MB, with ~1700 formulas to typeset
MATHJAX_TIMEOUT_MS = 180_000
FRAMES_IN_STRIP = 6  # frames of an animation shown in print
MAX_PRINTS = 3

# Turns the single HTML page into the printed book; returns what the page-number pass needs.
PREPARE_JS = r"""
(cfg) => {
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const article = document.querySelector('article.bd-article');
  if (!article) throw new Error('no article.bd-article on the page');

  // ---- every document of the book: its top section (the root's is the article's first one)
  const docs = {};
  docs[cfg.root] = article.querySelector('section');
  for (const span of document.querySelectorAll('span[id^="document-"]')) {
    const sec = span.nextElementSibling;
    if (sec && sec.tagName === 'SECTION') docs[span.id.slice('document-'.length)] = sec;
  }
  const missing = cfg.docs.filter(d => !docs[d]);
  if (missing.length) throw new Error('documents missing from the page: ' + missing.join(', '));
  const docOf = node => {  // the document an element belongs to
    for (let n = node; n; n = n.parentElement) {
      if (n.tagName === 'SECTION' && n.previousElementSibling &&
          n.previousElementSibling.id && n.previousElementSibling.id.startsWith('document-'))
        return n.previousElementSibling.id.slice('document-'.length);
    }
    return cfg.root;
  };
  for (const d of cfg.docs) if (d !== cfg.root) docs[d].classList.add('cnnbook-chapter');
  docs[cfg.root].classList.add('cnnbook-chapter');

  // ---- collapsed cells (hide-input): shown without their toggle, or left out with their label
  let collapsed = 0;
  for (const det of document.querySelectorAll('article details')) {
    const cell = det.closest('div.cell');
    if (cfg.collapsed === 'omit' && det.classList.contains('above-input') && cell) {
      // The code goes, and with it the label naming the module it is exported to; the label
      // of an output that depends on the data stays with the output.
      for (let p = cell.previousElementSibling; p && p.matches('p.cnnbook-export, p.cnnbook-data');
           p = p.previousElementSibling)
        if (p.classList.contains('cnnbook-export')) { p.remove(); break; }
      det.remove();
    } else {
      det.open = true;
      det.classList.add('cnnbook-opened');
    }
    collapsed += 1;
  }

  // ---- animations (cnnbook.plotting.animation_html): a strip of evenly spaced frames
  let animations = 0;
  for (const box of document.querySelectorAll('div.animation')) {
    const img = box.querySelector('img[id^="_anim_img"]');
    const anim = img && window['anim' + img.id.slice('_anim_img'.length)];
    if (!anim || !anim.frames || !anim.frames.length)
      throw new Error('an animation without frames: ' +
                      (img ? img.id : box.outerHTML.slice(0, 80)));
    const n = anim.frames.length, k = Math.min(cfg.framesInStrip, n);
    const strip = el('figure', 'cnnbook-frames');
    const grid = el('div', 'cnnbook-frames-grid');
    for (let i = 0; i < k; i++) {
      const f = k === 1 ? 0 : Math.round(i * (n - 1) / (k - 1));
      const cellFig = el('div', 'cnnbook-frame');
      const im = el('img');
      im.src = anim.frames[f].src;
      im.alt = `frame ${f + 1} of ${n}`;
      cellFig.append(im, el('div', 'cnnbook-frame-no', `frame ${f + 1} of ${n}`));
      grid.append(cellFig);
    }
    strip.append(el('figcaption', '',
      `${k} of the ${n} frames of the animation (the HTML book plays all of them).`), grid);
    box.replaceWith(strip);
    animations += 1;
  }
  // Matplotlib's controls script and style are of no use on paper.
  document.querySelectorAll('article .anim-controls').forEach(c => c.remove());

  // ---- links: to a place in the book -> in-document link; to a file of the site -> text
  let unique = 0;
  const targetFor = (a, path, frag) => {
    const page = path.replace(/\.html$/, '').replace(/^(\.\.\/)+/, '');
    const doc = page === '' ? docOf(a) :
      (cfg.docs.includes(page) ? page :
       (cfg.docs.includes('book/' + page) ? 'book/' + page : null));
    if (!frag) return doc ? docs[doc] : null;
    const all = Array.from(document.querySelectorAll('[id="' + CSS.escape(frag) + '"]'));
    if (!all.length) return null;
    if (a.closest('.bibtex-citation')) {
      const entry = all.find(e => e.getAttribute('role') === 'doc-biblioentry');
      if (entry) return entry;
    }
    if (doc && doc !== cfg.root) return all.find(e => docOf(e) === doc) || all[0];
    return all.find(e => docOf(e) === docOf(a)) || all[0];
  };
  const idOf = t => {
    if (!t.id || document.getElementById(t.id) !== t) t.id = 'cnnbook-target-' + (++unique);
    return t.id;
  };
  let pagerefs = 0, unlinked = 0, broken = [];
  for (const a of Array.from(article.querySelectorAll('a[href]'))) {
    const href = a.getAttribute('href');
    if (/^[a-z][a-z0-9+.-]*:/i.test(href) || a.classList.contains('headerlink')) continue;
    const m = href.match(/^([^#]*)(?:#(.*))?$/);
    let path = m[1], frag = m[2] ? decodeURIComponent(m[2]) : '';
    if (frag.startsWith('document-')) {  // singlehtml's link to a whole document
      const rest = frag.slice('document-'.length).split('#');
      path = rest[0]; frag = rest[1] || '';
    }
    if (path && !/\.html$/.test(path) && !cfg.docs.includes(path)) {  // a file of the site
      a.removeAttribute('href');
      a.classList.add('cnnbook-unlinked');
      unlinked += 1;
      continue;
    }
    let target = targetFor(a, path, frag);
    if (target && target.tagName === 'SPAN' && target.id.startsWith('document-'))
      target = target.nextElementSibling;
    if (!target) { broken.push(href); continue; }
    a.setAttribute('href', '#' + idOf(target));
    // A reference to a section or chapter of another document gets its page number.
    const heading = target.tagName === 'SECTION' || /^H[1-6]$/.test(target.tagName);
    if (heading && docOf(target) !== docOf(a) && !a.closest('.cnnbook-export')) {
      const ref = el('span', 'cnnbook-pageref', ' (p.\u00a0000)');
      ref.dataset.target = target.id;
      a.after(ref);
      pagerefs += 1;
    }
  }

  // ---- title page and table of contents
  const titleOf = d => {
    const h = docs[d].querySelector('h1, h2, h3');
    const c = h.cloneNode(true);
    c.querySelectorAll('.headerlink').forEach(x => x.remove());
    return c.textContent.trim();
  };
  const front = el('div', 'cnnbook-front');
  const tp = el('div', 'cnnbook-titlepage');
  tp.append(el('div', 'cnnbook-title', cfg.title), el('div', 'cnnbook-subtitle', cfg.subtitle),
            el('div', 'cnnbook-author', cfg.author),
            el('div', 'cnnbook-version', 'Version ' + cfg.version),
            el('div', 'cnnbook-colophon', cfg.colophon));
  const toc = el('nav', 'cnnbook-toc');
  toc.append(el('h1', 'cnnbook-toc-title', 'Contents'));
  const entry = (d, cls) => {
    const row = el('a', 'cnnbook-toc-entry ' + cls);
    row.href = '#' + idOf(docs[d]);
    const page = el('span', 'cnnbook-toc-page', '000');
    page.dataset.target = docs[d].id;
    row.append(el('span', 'cnnbook-toc-text', titleOf(d)), page);
    return row;
  };
  toc.append(entry(cfg.root, 'cnnbook-toc-chapter'));
  const chapters = [{doc: cfg.root, title: titleOf(cfg.root), id: docs[cfg.root].id}];
  cfg.parts.forEach((part, i) => {
    if (part.caption) {
      toc.append(el('div', 'cnnbook-toc-part', `Part ${i + 1} \u00b7 ${part.caption}`));
      const kicker = el('div', 'cnnbook-part', `Part ${i + 1} \u00b7 ${part.caption}`);
      docs[part.chapters[0]].prepend(kicker);
    }
    for (const d of part.chapters) {
      toc.append(entry(d, 'cnnbook-toc-chapter'));
      chapters.push({doc: d, title: titleOf(d), id: docs[d].id});
    }
  });
  front.append(tp, toc);

  // ---- the printed page: the article alone, no navigation chrome
  article.prepend(front);
  const keep = Array.from(document.body.querySelectorAll(':scope > script, :scope > style'));
  document.body.replaceChildren(article, ...keep);
  document.body.classList.add('cnnbook-printed-book');
  document.title = cfg.title + ' (version ' + cfg.version + ')';
  return {chapters, pagerefs, unlinked, broken, collapsed, animations,
          math: document.querySelectorAll('mjx-container').length,
          images: document.querySelectorAll('img').length};
}
"""

# Writes the page numbers found in the previous print: {target id: page number}.
NUMBER_JS = r"""
(pages) => {
  const missing = new Set();
  for (const s of document.querySelectorAll('.cnnbook-toc-page, .cnnbook-pageref')) {
    const p = pages[s.dataset.target];
    if (p === undefined) { missing.add(s.dataset.target); continue; }
    s.textContent = s.classList.contains('cnnbook-pageref') ? ` (p.\u00a0${p})` : String(p);
  }
  return Array.from(missing);
}
"""

# Elements wider than the printed page (laid out at its width): they would be cut at the margin.
WIDE_JS = r"""
() => {
  const limit = document.documentElement.clientWidth + 1;
  const wide = [];
  const sel = 'pre, mjx-container[display="true"], img, table, .cell_output > *';
  for (const e of document.querySelectorAll(sel)) {
    const r = e.getBoundingClientRect();
    if (!r.width || e.closest('.cnnbook-titlepage')) continue;
    if (r.right > limit || e.scrollWidth > e.clientWidth + 1)
      wide.push(e.tagName.toLowerCase() + ': ' +
                (e.textContent || e.getAttribute('src') || '').trim().slice(0, 70));
  }
  return wide;
}
"""
PRINTABLE_WIDTH_MM = {"A4": 210 - 34, "Letter": 215.9 - 34}  # paper less the margins of PAGE_CSS

# The running footer (page number, version) and the paper; the rest is in _static.
PAGE_CSS = """
@page {{ size: {paper}; margin: 18mm 17mm 20mm 17mm;
  @bottom-center {{ content: counter(page); font: 9pt sans-serif; color: #555; }}
  @bottom-right {{ content: "cnnbook {version}"; font: 8pt sans-serif; color: #999; }} }}
@page :first {{ @bottom-center {{ content: none; }} @bottom-right {{ content: none; }} }}
@media print {{ html {{ font-size: 10pt !important; }} }}
"""


class PdfError(RuntimeError):
    """The PDF could not be made (the message says why)."""


def book_config() -> dict:
    """Title, author and the parts of the toc (captions, document names), from the book's yml."""
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8")) or {}
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8")) or {}
    strip = lambda name: re.sub(r"\.(md|ipynb)$", "", str(name)).strip("/")  # noqa: E731
    parts = []
    for part in toc.get("parts", []) or [{"chapters": toc.get("chapters", [])}]:
        chapters = [strip(c["file"]) for c in part.get("chapters", []) if "file" in c]
        if chapters:
            parts.append({"caption": part.get("caption", ""), "chapters": chapters})
    if not toc.get("root") or not parts:
        raise PdfError("_toc.yml names no root page or no chapters")
    title = str(config.get("title", "cnnbook"))
    name, _, subtitle = title.partition(": ")
    return {"title": name, "subtitle": subtitle, "author": str(config.get("author", "")),
            "root": strip(toc["root"]), "parts": parts,
            "docs": [strip(toc["root"])] + [d for p in parts for d in p["chapters"]]}


def package_version() -> str:
    """``cnnbook.__version__``, read from the package source (no import needed)."""
    text = (REPO / "src" / "cnnbook" / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    if not m:
        raise PdfError("no __version__ in src/cnnbook/__init__.py (run tools/tangle.py)")
    return m.group(1)


def build_singlehtml(out_root: Path) -> Path:
    """Jupyter Book's singlehtml build, strict, into ``out_root/_build/singlehtml``."""
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", ".", "--builder", "singlehtml",
           "--path-output", str(out_root), "-W", "-n", "--keep-going", "-q"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PdfError("the singlehtml build failed:\n" + proc.stdout[-4000:] + proc.stderr[-4000:])
    return out_root / "_build" / "singlehtml"


def page_numbers(pdf: bytes) -> dict[str, int]:
    """{named destination: 1-based page}: Chromium makes one for every link target."""
    from pypdf import PdfReader

    # Chromium's PDF trailer undercounts its objects by a few; pypdf says so and copes.
    logging.getLogger("pypdf").setLevel(logging.ERROR)

    reader = PdfReader(io.BytesIO(pdf))
    return {name.lstrip("/"): reader.get_destination_page_number(dest) + 1
            for name, dest in reader.named_destinations.items()}


def print_book(html_dir: Path, root: str, out: Path, cfg: dict, paper: str,
               log=print) -> dict:
    """Print the single page ``html_dir/<root>.html`` as the book; returns a summary."""
    from playwright.sync_api import sync_playwright

    # The page's relative links (_static/, _images/, book/NAME.html) are relative to the
    # output root, though Sphinx wrote the page into book/: print a copy at the root.
    source = html_dir / f"{root}.html"
    if not source.is_file():
        raise PdfError(f"no single-page book at {source}")
    page_file = html_dir / "cnnbook-print.html"
    shutil.copyfile(source, page_file)
    css = (PAGE_CSS.format(paper=paper, version=cfg["version"])
           + (REPO / "_static" / "cnnbook-print.css").read_text(encoding="utf-8"))

    blocked: list[str] = []
    server = start_server(html_dir)
    base = f"http://127.0.0.1:{server.server_address[1]}/"

    def route(r):
        url = r.request.url
        if url.startswith(("data:", "blob:", base)):
            r.continue_()
        else:
            blocked.append(url)
            r.abort("blockedbyclient")

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 1400})
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.route("**/*", route)
                t = time.monotonic()
                page.goto(base + page_file.name, wait_until="load", timeout=PAGE_TIMEOUT_MS)
                state = page.evaluate(WAIT_MATHJAX_JS, MATHJAX_TIMEOUT_MS)
                if state != "ok":
                    raise PdfError(f"MathJax: {state}")
                images = page.evaluate(IMAGES_JS)
                if images["bad"]:
                    raise PdfError(f"images did not load: {images['bad'][:5]}")
                log(f"pdf: page loaded, math typeset, {images['count']} images "
                    f"({time.monotonic() - t:.1f} s)")
                if errors:  # later ones come from the theme's scripts missing the chrome
                    raise PdfError(f"errors on the page: {errors[:5]}")
                page.add_style_tag(content=css)
                summary = page.evaluate(PREPARE_JS, {
                    **cfg, "framesInStrip": FRAMES_IN_STRIP,
                    "colophon": "The outputs are the reference outputs that continuous "
                                "integration checks by running every chapter again (preface, "
                                "\u201cHow outputs are checked\u201d)."})
                if summary["broken"]:
                    raise PdfError(f"links to nowhere in the book: {summary['broken'][:10]}")
                page.evaluate("async () => { await document.fonts.ready; }")
                page.evaluate(IMAGES_JS)  # the frames of the animation strips
                # Laid out at the width of the printed page, nothing may stick out.
                page.emulate_media(media="print")
                page.set_viewport_size({"width": round(PRINTABLE_WIDTH_MM[paper] * 96 / 25.4),
                                        "height": 1000})
                summary["wide"] = page.evaluate(WIDE_JS)
                for what in summary["wide"][:10]:
                    log(f"pdf: wider than the page: {what}")
                numbers: dict[str, int] = {}
                for attempt in range(1, MAX_PRINTS + 1):
                    t = time.monotonic()
                    # Not a tagged PDF: Chromium's tags (and the bookmarks it makes from them)
                    # triple the size; add_bookmarks() makes the bookmarks instead.
                    pdf = page.pdf(prefer_css_page_size=True, print_background=True)
                    found = page_numbers(pdf)
                    log(f"pdf: print {attempt}: {len(pdf) / 1e6:.1f} MB "
                        f"({time.monotonic() - t:.1f} s)")
                    if attempt > 1 and all(found.get(k) == v for k, v in numbers.items()):
                        break
                    if attempt == MAX_PRINTS:
                        raise PdfError("page numbers still moving after "
                                       f"{MAX_PRINTS} prints")
                    numbers = found
                    missing = page.evaluate(NUMBER_JS, numbers)
                    if missing:
                        raise PdfError(f"no page found for the targets {missing[:10]}")
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    if blocked:
        raise PdfError(f"the page asked for non-local resources (refused): {blocked[:5]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary["pages"] = write_with_bookmarks(pdf, out, cfg, summary["chapters"], numbers)
    summary["chapter_pages"] = {c["title"]: numbers.get(c["id"]) for c in summary["chapters"]}
    return summary


def write_with_bookmarks(pdf: bytes, out: Path, cfg: dict, chapters: list[dict],
                         numbers: dict[str, int]) -> int:
    """Write the PDF with bookmarks (contents, parts, chapters) and its title; returns the
    number of pages."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    page_of = {c["doc"]: numbers[c["id"]] - 1 for c in chapters}
    title_of = {c["doc"]: c["title"] for c in chapters}
    writer.add_outline_item(title="Contents", page_number=1)
    writer.add_outline_item(title=title_of[cfg["root"]], page_number=page_of[cfg["root"]])
    for i, part in enumerate(cfg["parts"], 1):
        first = page_of[part["chapters"][0]]
        parent = None
        if part["caption"]:
            parent = writer.add_outline_item(title=f"Part {i} \u00b7 {part['caption']}",
                                             page_number=first)
        for doc in part["chapters"]:
            writer.add_outline_item(title=title_of[doc], page_number=page_of[doc], parent=parent)
    writer.page_mode = "/UseOutlines"
    writer.add_metadata({"/Title": f"{cfg['title']}: {cfg['subtitle']}".rstrip(": "),
                         "/Author": cfg["author"],
                         "/Subject": f"cnnbook version {cfg['version']}"})
    with open(out, "wb") as f:
        writer.write(f)
    return len(writer.pages)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="_build/pdf/cnnbook.pdf", help="the PDF to write")
    ap.add_argument("--no-build", action="store_true",
                    help="print the existing _build/pdf/_build/singlehtml (no Sphinx build)")
    ap.add_argument("--collapsed", choices=("show", "omit"), default="show",
                    help="cells collapsed on the HTML pages (hide-input): shown or left out")
    ap.add_argument("--paper", choices=("A4", "Letter"), default="A4")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"pdf: {CHROMIUM} is missing: install Debian's chromium (tools/setup.sh does, "
              "as root)", file=sys.stderr)
        return 1
    out = (REPO / args.out).resolve()
    t0 = time.monotonic()
    try:
        cfg = {**book_config(), "version": package_version(), "collapsed": args.collapsed}
        html_dir = REPO / "_build" / "pdf" / "_build" / "singlehtml"
        if not args.no_build:
            html_dir = build_singlehtml(REPO / "_build" / "pdf")
            print(f"pdf: single-page HTML built ({time.monotonic() - t0:.1f} s)")
        summary = print_book(html_dir, cfg["root"], out, cfg, args.paper)
    except PdfError as exc:
        print(f"pdf: {exc}", file=sys.stderr)
        return 1
    print(f"pdf: {summary['pages']} pages, {len(summary['chapters'])} chapters, "
          f"{summary['math']} formulas, {summary['images']} images, "
          f"{summary['animations']} animation(s) as frame strips, "
          f"{summary['collapsed']} collapsed cells ({args.collapsed}), "
          f"{summary['pagerefs']} page references, "
          f"{len(summary['wide'])} element(s) wider than the page")
    try:
        shown = out.relative_to(REPO)
    except ValueError:
        shown = out
    print(f"pdf: wrote {shown} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
