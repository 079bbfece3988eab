"""Sphinx extension of the book (loaded by _config.yml).

1. Chapters are shown with their *reference outputs*: the outputs CI verified by
   re-running each chapter under nbval.  The book build executes nothing.  It is
   registered as myst-nb's reader for ``.md`` files (``nb_custom_formats``); a
   stale or missing reference is a build error that names the refresh command.
2. MathJax is served from the site itself (a copy shipped by the
   ``sphinx-mathjax-offline`` package), so pages make no CDN request.
3. Every exported cell is labelled with the module it is tangled into (styled by
   _static/cnnbook.css, which Jupyter Book links on every page), so a
   reader sees which code is the package and which is demonstration.
4. Inline scripts that Sphinx 7.4 adds twice to every page (sphinx-thebe's and
   sphinx-togglebutton's; a Sphinx bug fixed upstream in sphinx-doc/sphinx#13402,
   but jupyter-book 1 pins sphinx 7) are de-duplicated: the doubled
   ``const THEBE_JS_URL`` is a SyntaxError in the reader's browser.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from chapters import ChapterError, code_cells, with_reference_outputs
from tangle import exported_module, module_path

_app = None  # the running Sphinx application, for the reader below


def read_chapter_with_outputs(text: str, **kwargs):
    """myst-nb reader: the MyST notebook as myst-nb reads it, plus reference outputs."""
    from myst_nb.core.read import read_myst_markdown_notebook

    env = _app.env
    path = Path(env.doc2path(env.docname))
    nb = read_myst_markdown_notebook(text, config=env.myst_config, add_source_map=True, path=str(path))
    if not code_cells(nb):
        return nb
    try:
        merged = with_reference_outputs(path)
    except ChapterError as exc:
        raise ChapterError(f"cannot build {path.name}: {exc}") from None
    ours, theirs = code_cells(nb), code_cells(merged)
    if len(ours) != len(theirs) or any(a.source.strip() != b.source.strip() for a, b in zip(ours, theirs)):
        raise ChapterError(f"{path}: myst-nb and jupytext read different code cells")
    for cell, ref in zip(ours, theirs):
        cell.outputs = ref.outputs
        cell.execution_count = ref.execution_count
    return nb


def _mathjax_dir() -> Path:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the package sphinx-mathjax-offline is needed to serve MathJax locally")
    return Path(spec.origin).parent / "static" / "mathjax"


def _copy_mathjax(app, exc):
    if exc is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / "mathjax"
        shutil.copytree(_mathjax_dir(), target, dirs_exist_ok=True)


def _label_exported_cells(app, doctree):
    from docutils import nodes

    for cell in list(doctree.findall(nodes.container)):
        if cell.get("nb_element") != "cell_code":
            continue
        tags = (cell.get("cell_metadata") or {}).get("tags", [])
        modules = [m for m in map(exported_module, tags) if m]
        if not modules:
            continue
        module, target = modules[0], module_path(modules[0])
        label = nodes.paragraph("", "", classes=["cnnbook-export"])
        label += nodes.Text("Exported to ")
        label += nodes.literal(module, module)
        label += nodes.Text(f" ({target})")
        cell.parent.insert(cell.parent.index(cell), label)


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = (  # the doubled copy of an inline script has filename None instead of ""
            getattr(js, "filename", None) or "",
            getattr(js, "priority", None),
            tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def _remember_app(app):
    global _app
    _app = app


def setup(app):
    _remember_app(app)
    app.connect("builder-inited", _remember_app)
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("doctree-read", _label_exported_cells)
    _mathjax_dir()  # fail early when the MathJax copy is missing
    return {"parallel_read_safe": True, "parallel_write_safe": True}
