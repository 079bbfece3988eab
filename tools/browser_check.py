#!/usr/bin/env python
"""Check what readers see in the built HTML book, in headless Chromium.

Usage (from the repository root)::

    .venv/bin/python tools/browser_check.py [--html _build/html]
        [--screenshot _build/screenshot.png] [--screenshot-page book/NAME.html]

The script serves the built site on 127.0.0.1 (a free port), opens every
chapter page listed in ``_toc.yml`` plus ``index.html`` (a redirect) and
``search.html?q=gradient`` in headless Chromium (Debian's
``/usr/bin/chromium``, driven by playwright), and fails a page on

* a console error or an uncaught page error;
* a failed request or a response with status >= 400;
* any request leaving 127.0.0.1 (it is aborted: the book must use no CDN);
* math left as raw TeX after MathJax has finished, a MathJax TeX error, or a
  page with math elements but no rendered ``mjx-container``;
* an image that did not load;
* a primary sidebar that lacks a link to one of the toc's chapter pages;
* a link of the article to an anchor that the target page lacks (citations to the
  bibliography, cross-references, API entries: each target page is fetched and parsed);
* a code cell that scrolls sideways in a 1440-pixel-wide window (code lines are at most
  100 characters, and the stylesheet makes them fit).

It saves a full-page screenshot of one chapter page, prints one line per
page and a final ``browser_check: N passed, M failed`` line, and exits 1 if
any page failed (0 otherwise).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import re
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import yaml

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PAGE_TIMEOUT_MS = 20_000
# The narrowest desktop screen on which code lines of 100 characters must fit (CONTRIBUTING.md).
VIEWPORT_WIDTH = 1440
MATHJAX_TIMEOUT_MS = 15_000
IDLE_TIMEOUT_MS = 3_000

# TeX that must not survive into the text a reader sees (outside pre/code).
TEX_COMMANDS = (
    "frac|dfrac|tfrac|sum|prod|int|sqrt|mathbf|mathrm|mathcal|mathbb|mathit|"
    "boldsymbol|operatorname|text|textbf|left|right|cdot|cdots|ldots|dots|times|"
    "partial|nabla|alpha|beta|gamma|delta|epsilon|varepsilon|eta|theta|lambda|"
    "mu|sigma|rho|tau|phi|omega|Delta|Sigma|leq|geq|le|ge|neq|approx|infty|"
    "begin|end|hat|bar|tilde|vec|top|odot|otimes|max|min|log|exp|quad|qquad"
)
RAW_TEX_PATTERNS = [
    (re.compile(r"\$\$"), "'$$' delimiter"),
    (re.compile(r"\\[(\[]"), r"'\(' or '\[' delimiter"),
    (re.compile(r"\\[)\]]"), r"'\)' or '\]' delimiter"),
    (re.compile(r"\\(?:%s)(?![A-Za-z])" % TEX_COMMANDS), "TeX command"),
    (re.compile(r"[\^_]\{"), "TeX sub/superscript '^{' or '_{'"),
    (re.compile(r"\$[^$\s][^$\n]{0,80}?[\\^_{][^$\n]{0,80}?\$"), "'$...$' inline TeX"),
]

# Text of the article as the reader sees it, minus code and rendered math.
ARTICLE_TEXT_JS = """
() => {
  const root = document.querySelector('main .bd-article') ||
               document.querySelector('.bd-article') ||
               document.querySelector('main') || document.body;
  const skip = 'pre, code, script, style, noscript, textarea, template, ' +
               'mjx-container, mjx-assistive-mml, .MathJax';
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (el && el.closest(skip)) continue;
    parts.push(n.nodeValue);
  }
  return parts.join('');
}
"""

MATH_STATE_JS = """
() => ({
  mathElements: document.querySelectorAll('.math').length,
  unrendered: Array.from(document.querySelectorAll('.math'))
      .filter(e => !e.querySelector('mjx-container') && !e.closest('pre, code'))
      .map(e => e.textContent.trim().slice(0, 80)),
  containers: document.querySelectorAll('mjx-container').length,
  texErrors: (() => {
    // TeX errors (merror) and undefined macros (shown in red by MathJax's
    // noundefined extension), from MathJax's own list of typeset math.
    const errs = [];
    try {
      for (const item of MathJax.startup.document.math) {
        const mml = MathJax.startup.toMML(item.root);
        if (/<merror|mathcolor="red"/.test(mml)) errs.push(String(item.math).slice(0, 120));
      }
    } catch (e) {
      document.querySelectorAll('mjx-merror').forEach(
        m => errs.push((m.getAttribute('data-mjx-error') || m.textContent).slice(0, 120)));
    }
    return errs;
  })(),
  hasMathJaxScript: !!document.querySelector('script[src*="mathjax" i]'),
})
"""

WAIT_MATHJAX_JS = """
async (timeoutMs) => {
  const deadline = Date.now() + timeoutMs;
  const hasScript = !!document.querySelector('script[src*="mathjax" i]');
  const hasMath = document.querySelectorAll('.math').length > 0;
  if (!hasScript && !hasMath) return 'no-mathjax';
  // MathJax's script is deferred, so after "load" it has run; allow a short
  // grace period rather than the whole timeout when it failed to load.
  const started = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
  const grace = Date.now() + 3000;
  while (!started()) {
    if (Date.now() > deadline || (document.readyState === 'complete' && Date.now() > grace))
      return hasScript ? 'MathJax never started (its script did not load or run)'
                       : 'page has math but loads no MathJax script';
    await new Promise(r => setTimeout(r, 50));
  }
  const timeout = new Promise(r => setTimeout(() => r('timeout'), Math.max(0, deadline - Date.now())));
  const done = MathJax.startup.promise.then(() => 'ok', e => 'MathJax failed: ' + e);
  const result = await Promise.race([done, timeout]);
  if (result === 'timeout') return 'MathJax did not finish typesetting in time';
  return result;
}
"""

IMAGES_JS = """
async () => {
  const imgs = Array.from(document.querySelectorAll('img'));
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
  const deadline = Date.now() + 5000;
  while (imgs.some(i => !i.complete) && Date.now() < deadline)
    await new Promise(r => setTimeout(r, 50));
  const bad = [];
  for (const i of imgs) {
    let ok = i.complete && i.naturalWidth > 0;
    if (!ok && i.complete && /\\.svg(\\?|#|$)/i.test(i.currentSrc || i.src)) {
      try { await i.decode(); ok = true; } catch (e) {}
    }
    if (!ok) bad.push(i.currentSrc || i.src || i.outerHTML.slice(0, 120));
  }
  return {count: imgs.length, bad};
}
"""

SIDEBAR_LINKS_JS = """
() => {
  // The docs navigation itself; the whole primary sidebar only as a fallback
  // (it also holds the logo link to the root page, which would hide a gap).
  let navs = Array.from(document.querySelectorAll('nav.bd-docs-nav'));
  if (!navs.length) navs = Array.from(document.querySelectorAll('.bd-sidebar-primary'));
  if (!navs.length) return null;
  const hrefs = new Set();
  navs.forEach(n => n.querySelectorAll('a[href]').forEach(a => hrefs.add(a.href)));
  return Array.from(hrefs);
}
"""

# Links of the page's article to an anchor of the site (a citation to its bibliography entry, a
# cross-reference to a section, the API entry of a name) whose anchor does not exist on the target
# page: the target is fetched and parsed in the browser, once per page.
BROKEN_ANCHORS_JS = """
async () => {
  const bad = new Set(), pages = {};
  const here = location.origin + location.pathname;
  for (const a of document.querySelectorAll('article a[href]')) {
    const u = new URL(a.href);
    const id = decodeURIComponent(u.hash.slice(1));
    if (u.origin !== location.origin || !id) continue;
    const target = u.origin + u.pathname;
    let doc = document;
    if (target !== here) {
      if (!(target in pages)) {
        const r = await fetch(target);
        pages[target] = r.ok ? new DOMParser().parseFromString(await r.text(), 'text/html') : null;
      }
      doc = pages[target];
    }
    if (!doc || !doc.getElementById(id)) bad.add(a.href);
  }
  return {count: document.querySelectorAll('article a[href*="#"]').length, bad: Array.from(bad)};
}
"""

# Code cells whose source scrolls sideways: (first line of the cell, widest line in characters).
WIDE_CODE_JS = """
() => Array.from(document.querySelectorAll('div.cell_input pre'))
  .filter(p => p.scrollWidth > p.clientWidth + 1)
  .map(p => [p.textContent.split('\\n')[0].slice(0, 60),
             Math.max(...p.textContent.split('\\n').map(l => l.length))])
"""

SEARCH_DONE_JS = """
() => {
  const out = document.getElementById('search-results');
  if (!out) return false;
  if (out.querySelector('ul.search li')) return true;
  const summary = out.querySelector('.search-summary');
  return !!(summary && summary.textContent.trim());
}
"""


# --------------------------------------------------------------------------- toc


def toc_pages(toc_path: Path) -> list[str]:
    """Site-relative HTML paths of the toc's pages, root first, in toc order."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8")) or {}
    files: list[str] = []

    def add(name: str) -> None:
        name = re.sub(r"\.(md|ipynb|rst|txt)$", "", str(name).strip().lstrip("/"))
        if name and name not in files:
            files.append(name)

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if "file" in node:
                add(node["file"])
            if "glob" in node:
                base = toc_path.parent
                for p in sorted(base.glob(str(node["glob"]))):
                    if p.suffix in (".md", ".ipynb", ".rst"):
                        add(p.relative_to(base).with_suffix("").as_posix())
            for key in ("parts", "chapters", "sections"):
                if key in node:
                    walk(node[key])

    if toc.get("root"):
        add(toc["root"])
    walk({k: v for k, v in toc.items() if k in ("parts", "chapters", "sections")})
    return [f + ".html" for f in files]


# ------------------------------------------------------------------------ server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass


def start_server(directory: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="browser-check-http", daemon=True).start()
    return server


# ------------------------------------------------------------------------ checks


def strip_url(url: str) -> str:
    url = urldefrag(url)[0]
    return url.split("?", 1)[0]


def raw_tex_problems(text: str, limit: int = 5) -> list[str]:
    """One problem per place where TeX shows in the text (nearby hits merged)."""
    hits = sorted((m.start(), m.end(), what)
                  for pattern, what in RAW_TEX_PATTERNS for m in pattern.finditer(text))
    groups: list[list] = []  # [start, end, [kinds]]
    for start, end, what in hits:
        if groups and start <= groups[-1][1] + 40:
            groups[-1][1] = max(groups[-1][1], end)
            groups[-1][2].append(what)
        else:
            groups.append([start, end, [what]])
    problems = []
    for start, end, kinds in groups[:limit]:
        a, b = max(0, start - 30), min(len(text), end + 30)
        snippet = " ".join(text[a:b].split())
        kinds = ", ".join(dict.fromkeys(kinds))
        problems.append(f"raw TeX in page text ({kinds}): ...{snippet}...")
    if len(groups) > limit:
        problems.append(f"raw TeX in page text: {len(groups) - limit} more place(s)")
    return problems


class PageCheck:
    """Open one page, collect problems and stats."""

    def __init__(self, context, base: str, path: str, chapter_urls: dict[str, str],
                 expect_redirect: str | None = None, search: bool = False):
        self.context = context
        self.base = base
        self.path = path
        self.chapter_urls = chapter_urls
        self.expect_redirect = expect_redirect
        self.search = search
        self.problems: list[str] = []
        self.blocked: set[str] = set()
        self.bad_status: set[str] = set()
        self.n_math = 0
        self.n_images = 0
        self.n_results = None

    # -- event handlers
    def _route(self, route):
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob"):
            route.continue_()
            return
        if parts.scheme in ("http", "https") and parts.hostname == "127.0.0.1":
            route.continue_()
            return
        if url not in self.blocked:
            self.blocked.add(url)
            try:
                origin = route.request.frame.url
            except Exception:  # e.g. a worker's request has no frame
                origin = "?"
            self.problems.append(
                f"non-local request blocked: {url} ({route.request.resource_type}, from {origin})")
        route.abort("blockedbyclient")

    def _console(self, msg):
        if msg.type != "error":
            return
        loc = msg.location or {}
        if loc.get("url") in self.blocked or any(u in msg.text for u in self.blocked):
            return  # already reported as a blocked non-local request
        if loc.get("url") in self.bad_status and msg.text.startswith("Failed to load resource"):
            return  # already reported with its HTTP status
        where = loc.get("url", "")
        if where:
            where = f" (at {where}:{loc.get('lineNumber', '?')})"
        self.problems.append(f"console error: {msg.text}{where}")

    def _pageerror(self, err):
        name, message = getattr(err, "name", ""), getattr(err, "message", str(err))
        text = f"{name}: {message}" if name else message
        at = [ln.strip() for ln in (getattr(err, "stack", "") or "").splitlines()
              if ln.strip().startswith("at ")]
        self.problems.append(f"uncaught page error: {text}" + (f" ({at[0]})" if at else ""))

    def _requestfailed(self, request):
        if request.url in self.blocked or request.url in self.bad_status:
            return
        self.problems.append(f"request failed: {request.url} ({request.failure})")

    def _response(self, response):
        if response.status >= 400:
            self.bad_status.add(response.url)
            self.problems.append(f"HTTP {response.status} for {response.url}")

    # -- main
    def run(self, screenshot: Path | None = None) -> None:
        page = self.context.new_page()
        page.on("console", self._console)
        page.on("pageerror", self._pageerror)
        page.on("requestfailed", self._requestfailed)
        page.on("response", self._response)
        page.route("**/*", self._route)
        try:
            self._check(page)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        except Exception as exc:  # playwright timeouts, crashes, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.problems.append(f"{type(exc).__name__}: {first}")
        finally:
            problems = list(self.problems)
            try:
                page.close()
            except Exception:
                pass
            self.problems = problems

    def _check(self, page) -> None:
        url = self.base + self.path
        response = page.goto(url, wait_until="load", timeout=PAGE_TIMEOUT_MS)
        if response is None:
            self.problems.append("no response for the page itself")
        if self.expect_redirect is not None:
            target = self.base + self.expect_redirect
            page.wait_for_url(lambda u: strip_url(u) == target, wait_until="load",
                              timeout=PAGE_TIMEOUT_MS)
        # MathJax (only on pages that load it or have math).
        state = page.evaluate(WAIT_MATHJAX_JS, MATHJAX_TIMEOUT_MS)
        if state not in ("ok", "no-mathjax"):
            self.problems.append(state)
        if self.search:
            self._check_search(page)
        # Let late requests (fonts, lazy scripts) happen so they are checked too.
        try:
            page.evaluate("async () => { await document.fonts.ready; }")
            page.wait_for_load_state("networkidle", timeout=IDLE_TIMEOUT_MS)
        except Exception:
            pass
        self._check_math(page)
        self._check_images(page)
        self._check_sidebar(page)
        anchors = page.evaluate(BROKEN_ANCHORS_JS)
        for href in anchors["bad"][:10]:
            self.problems.append(f"link to a missing anchor: {href}")
        for first, width in page.evaluate(WIDE_CODE_JS):
            self.problems.append(
                f"code cell scrolls sideways at {VIEWPORT_WIDTH} px ({width} characters): {first!r}")

    def _check_search(self, page) -> None:
        try:
            page.wait_for_function(SEARCH_DONE_JS, timeout=PAGE_TIMEOUT_MS)
        except Exception:
            self.problems.append("search did not finish (no #search-results summary/results)")
            return
        self.n_results = page.locator("#search-results ul.search li").count()
        if self.n_results < 1:
            summary = page.locator("#search-results").inner_text().strip().replace("\n", " ")
            self.problems.append(f"search returned no results: {summary[:160]!r}")

    def _check_math(self, page) -> None:
        text = page.evaluate(ARTICLE_TEXT_JS)
        self.problems.extend(raw_tex_problems(text))
        st = page.evaluate(MATH_STATE_JS)
        self.n_math = st["containers"]
        if st["mathElements"] and not st["containers"]:
            self.problems.append(
                f"page has {st['mathElements']} math element(s) but no rendered mjx-container"
                + ("" if st["hasMathJaxScript"] else " (no MathJax script on the page)"))
        for src in st["unrendered"][:5]:
            self.problems.append(f"math element not typeset: {src!r}")
        for err in st["texErrors"][:5]:
            self.problems.append(f"MathJax TeX error or undefined macro in: {err!r}")

    def _check_images(self, page) -> None:
        res = page.evaluate(IMAGES_JS)
        self.n_images = res["count"]
        for src in res["bad"]:
            self.problems.append(f"image did not load: {src}")

    def _check_sidebar(self, page) -> None:
        hrefs = page.evaluate(SIDEBAR_LINKS_JS)
        if hrefs is None:
            self.problems.append("no primary sidebar (nav.bd-docs-nav / .bd-sidebar-primary)")
            return
        have = {strip_url(h) for h in hrefs}
        missing = [p for p, u in self.chapter_urls.items() if u not in have]
        if missing:
            self.problems.append("sidebar lacks links to: " + ", ".join(missing))


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", default="_build/html",
                    help="built site directory (relative to the repo root)")
    ap.add_argument("--screenshot", default="_build/screenshot.png",
                    help="where to save the screenshot (relative to the repo root)")
    ap.add_argument("--screenshot-page", default=None,
                    help="page to screenshot, e.g. book/NAME.html "
                         "(default: the second toc page, else the first)")
    ap.add_argument("--toc", default="_toc.yml", help="toc file (relative to the repo root)")
    ap.add_argument("--search-term", default="gradient", help="query for the search page check")
    args = ap.parse_args(argv)

    html = (REPO / args.html).resolve()
    screenshot = (REPO / args.screenshot).resolve()
    if not (html / "index.html").is_file():
        print(f"browser_check: no built book at {html} (index.html missing); "
              "build it with `jupyter-book build .`", file=sys.stderr)
        print("browser_check: 0 passed, 1 failed")
        return 1
    if not Path(CHROMIUM).exists():
        print(f"browser_check: {CHROMIUM} not found", file=sys.stderr)
        print("browser_check: 0 passed, 1 failed")
        return 1

    chapters = toc_pages(REPO / args.toc)
    if not chapters:
        print(f"browser_check: no pages found in {args.toc}", file=sys.stderr)
        print("browser_check: 0 passed, 1 failed")
        return 1
    shot_page = args.screenshot_page or (chapters[1] if len(chapters) > 1 else chapters[0])
    shot_page = shot_page.lstrip("/")
    if "." not in shot_page.rsplit("/", 1)[-1]:
        shot_page += ".html"  # book/NAME -> book/NAME.html

    from playwright.sync_api import sync_playwright

    if screenshot.is_file():
        screenshot.unlink()  # never leave a stale picture behind

    server = start_server(html)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    chapter_urls = {p: base + p for p in chapters}
    jobs = [(p, dict()) for p in chapters]
    jobs.append(("index.html", dict(expect_redirect=chapters[0])))
    jobs.append((f"search.html?q={args.search_term}", dict(search=True)))

    passed = failed = 0
    t0 = time.monotonic()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                for path, kw in jobs:
                    # A fresh context per page: every page is checked as a first
                    # visit (empty localStorage/cache), independent of the order.
                    context = browser.new_context(viewport={"width": VIEWPORT_WIDTH, "height": 900},
                                                  service_workers="block")
                    context.set_default_timeout(PAGE_TIMEOUT_MS)
                    context.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
                    check = PageCheck(context, base, path, chapter_urls, **kw)
                    if (html / path.split("?", 1)[0]).is_file():
                        check.run(screenshot if path == shot_page else None)
                    else:
                        check.problems.append(f"page missing: no {path.split('?', 1)[0]} in {html}")
                    context.close()
                    label = path
                    if kw.get("expect_redirect"):
                        label += f" -> {kw['expect_redirect']}"
                    if check.problems:
                        failed += 1
                        print(f"FAIL  {label}  ({len(check.problems)} problem(s))")
                        for prob in check.problems:
                            print(f"    {path}: {prob}")
                    else:
                        passed += 1
                        extra = f", {check.n_results} results" if check.n_results is not None else ""
                        print(f"ok  {label}  ({check.n_math} math, {check.n_images} images{extra})")
                    sys.stdout.flush()
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()

    if screenshot.is_file():
        print(f"screenshot of {shot_page}: {screenshot}")
    else:
        print(f"note: no screenshot taken ({shot_page} is not a checked page or could not be shown)")
    print(f"({time.monotonic() - t0:.1f} s)")
    print(f"browser_check: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
