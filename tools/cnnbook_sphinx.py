"""Sphinx extension of the book (loaded by _config.yml).

1. Chapters are shown with their *reference outputs*: the outputs CI verified by
   re-running each chapter under nbval.  The book build executes nothing.  It is
   registered as myst-nb's reader for ``.md`` files (``nb_custom_formats``); a
   stale or missing reference is a build error that names the refresh command.
2. MathJax is served from the site itself (a copy shipped by the
   ``sphinx-mathjax-offline`` package), so pages make no CDN request.
3. Every exported cell is labelled with the module it is tangled into (styled by
   _static/cnnbook.css, which Jupyter Book links on every page), so a
   reader sees which code is the package and which is demonstration.  A cell
   adding ``@add_to_class`` methods also names their class(es), found by the
   tangler's own parser.
4. Inline scripts that Sphinx 7.4 adds twice to every page (sphinx-thebe's and
   sphinx-togglebutton's; a Sphinx bug fixed upstream in sphinx-doc/sphinx#13402,
   but jupyter-book 1 pins sphinx 7) are de-duplicated: the doubled
   ``const THEBE_JS_URL`` is a SyntaxError in the reader's browser.
5. A page with cells tagged ``data-dependent`` says in one line at the top which copy of
   CIFAR-10 its outputs were computed on (from the fingerprint stored with its reference
   outputs), and each such cell is labelled. Kernel warnings lose their temporary file name,
   the loader's not-the-official-copy warning shows only in the CIFAR-10 chapter, and a
   deliberate error shows its message without the frames.
6. The student edition of every chapter with exercises (``tools/make_exercises.py``) is written
   to ``exercises/NAME.ipynb`` in the site, and the chapter's page links to it: a download, and
   a Binder launch of the same notebook (Binder's postBuild generates it there).
7. The API reference (``book/api/``, autodoc) and the chapters link to each other: each exported
   cell's label links to the reference entries of what it defines, and the "Explained in the
   chapter ..." line that the tangler adds to every docstring links to that chapter's section.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import nbformat

from chapters import (
    DATA_TAG,
    MACHINE_TAG,
    ChapterError,
    code_cells,
    describe_copy,
    describe_copy_briefly,
    reference_path,
    with_reference_outputs,
)
from tangle import add_to_class_targets, exported_module, module_path

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
        cell.outputs = _reader_outputs(ref.outputs, path.stem)
        cell.execution_count = ref.execution_count
    return nb


# A warning as a kernel prints it: "/tmp/ipykernel_123/456.py:4: UserWarning: text" and then the
# line of code that warned, indented. The reader sees "UserWarning: text" (the temporary file
# means nothing to them).
_KERNEL_WARNING = re.compile(r"^/tmp/ipykernel_\d+/\d+\.py:\d+: (\w+: .*)\n(?:  \S.*\n?)?",
                             re.MULTILINE)
# The data loader's warning about a copy of CIFAR-10 that is not the official archive: said in
# words in the CIFAR-10 chapter, on the other pages by the one-line note of _note_data_copy.
_COPY_WARNING = re.compile(r"^UserWarning: this CIFAR-10 copy is not the official one.*\n?",
                           re.MULTILINE)


def _reader_outputs(outputs, chapter):
    """A cell's reference outputs as the HTML page shows them: kernel warnings without the
    temporary file name, the not-the-official-copy warning only in the CIFAR-10 chapter, and an
    error (a cell tagged ``raises-exception``) as its message, without the frames."""
    shown = []
    for out in outputs:
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = _KERNEL_WARNING.sub(r"\1\n", out["text"])
            if chapter != "cifar10":
                text = _COPY_WARNING.sub("", text)
            if not text.strip():
                continue
            out = nbformat.from_dict({**out, "text": text})
        elif out.get("output_type") == "error":  # a deliberate error: its message, no frames
            out = nbformat.from_dict({**out, "traceback": [f"{out['ename']}: {out['evalue']}"]})
        shown.append(out)
    return shown


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
        code = [c for c in cell.findall(nodes.container) if c.get("nb_element") == "cell_code_source"]
        for i, name in enumerate(add_to_class_targets(code[0].astext() if code else "")):
            label += nodes.Text(", class " if i == 0 else ", ")
            label += nodes.literal(name, name)
        label += nodes.Text(f" ({target})")
        names = _public_definitions(code[0].astext() if code else "")
        api = f"book/api/{module.split('.', 1)[1]}" if "." in module else None
        if names and app is not None and api in app.env.found_docs:
            label += nodes.Text("; reference: ")
            for i, name in enumerate(names):
                uri = app.builder.get_relative_uri(app.env.docname, api) + f"#{module}.{name}"
                label += nodes.Text(", " if i else "")
                label += nodes.reference("", "", nodes.literal(name, name), refuri=uri)
        cell.parent.insert(cell.parent.index(cell), label)


def _public_definitions(source: str) -> list[str]:
    """Public top-level functions and classes a cell defines (its API reference entries)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
            and not n.name.startswith("_") and not any(
                isinstance(d, ast.Call) and getattr(d.func, "id", "") == "add_to_class"
                for d in getattr(n, "decorator_list", []))]



def _link_explanation(app, what, name, obj, options, lines):
    """autodoc: the docstring's "Explained in the chapter ... (book/X.md), section ..." line
    becomes a link to that section of the chapter."""
    import re

    from docutils.nodes import make_id

    for i, line in enumerate(lines):
        # Index notation of plain-text docstrings (d_{i-1}, {epoch}.pkl) is code, not TeX.
        lines[i] = line = re.sub(r"(?<![`\w])([^\s`\"]*[_^]?\{[^\s`\"]*\}[^\s`\"]*)", r"``\1``",
                                 line) if "``" not in line else line
        m = re.match(r'(\s*)Explained in the chapter "(.+)" \((book/[\w/]+)\.md\), '
                     r'section "(.+)"\.$', line)
        if m:
            indent, title, doc, section = m.groups()
            page = app.builder.get_relative_uri(app.env.docname, doc)
            lines[i] = (f"{indent}Explained in the chapter `{title}, section {section} "
                        f"<{page}#{make_id(section)}>`__.")


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


def _insert_below_title(doctree, node):
    """Put node right below the page's title (at the top if there is none)."""
    from docutils import nodes

    section = next(iter(doctree.findall(nodes.section)), None)
    if section is not None and section.children and isinstance(section[0], nodes.title):
        section.insert(1, node)
    else:
        doctree.insert(0, node)


def _note_data_copy(app, doctree):
    """On a page with ``data-dependent`` cells: a note at the top naming the CIFAR-10 copy its
    outputs were computed on (from the fingerprint stored with the reference outputs), and a
    label above each such cell."""
    from docutils import nodes

    cells = [c for c in doctree.findall(nodes.container) if c.get("nb_element") == "cell_code"
             and DATA_TAG in (c.get("cell_metadata") or {}).get("tags", [])]
    if not cells:
        return
    ref = reference_path(Path(app.env.doc2path(app.env.docname)))
    fingerprint = json.loads(ref.read_text(encoding="utf-8"))["metadata"].get("cnnbook", {}).get(
        "data_fingerprint")
    for cell in cells:
        label = nodes.paragraph("", "", classes=["cnnbook-data"])
        label += nodes.Text("Output depends on the CIFAR-10 copy")
        cell.parent.insert(cell.parent.index(cell), label)
    # One line (a paragraph above the first sentence would fill a phone's screen): the copy in a
    # few words, its full description as the tooltip, the details in the preface.
    note = nodes.paragraph("", "", classes=["cnnbook-data-note"])
    note += nodes.Text(f"Outputs marked \u25c6 were computed on {describe_copy_briefly(fingerprint)} ")
    note += nodes.reference("", "(how they are checked)", internal=True,
                            refuri="preface.html#how-outputs-are-checked",
                            reftitle=describe_copy(fingerprint) + ".")
    note += nodes.Text(".")
    _insert_below_title(doctree, note)


def _output_checks_table():
    """Rows (chapter, code cells, strict, data-dependent, machine-dependent, executed only) over
    the toc's chapters."""
    from chapters import notebook_chapters, read_chapter, rel

    rows = []
    for path in notebook_chapters():  # not the API reference pages
        cells = code_cells(read_chapter(path))
        tags = [set(c.metadata.get("tags", [])) for c in cells]
        ignored = sum("nbval-ignore-output" in t for t in tags)
        machine = sum(MACHINE_TAG in t and "nbval-ignore-output" not in t for t in tags)
        data = sum(DATA_TAG in t and not t & {MACHINE_TAG, "nbval-ignore-output"} for t in tags)
        rows.append((rel(path), len(cells), len(cells) - data - machine - ignored, data, machine,
                     ignored))
    return rows


def _output_checks_directive():
    """The directive ``{cnnbook-output-checks}``: a table of how each chapter's cells are checked,
    counted from the chapters when the book is built (so the preface never goes stale)."""
    from docutils import nodes
    from docutils.parsers.rst import Directive

    class OutputChecks(Directive):
        has_content = False

        def run(self):
            env = self.state.document.settings.env
            rows = _output_checks_table()
            for chapter, *_ in rows:
                env.note_dependency(str(Path(env.srcdir) / chapter))
            head = ("chapter", "code cells", "compared strictly", "data-dependent",
                    "machine-dependent", "executed only")
            total = ("all chapters", *(sum(r[i] for r in rows) for i in range(1, len(head))))
            table = nodes.table(classes=["cnnbook-output-checks"])
            group = nodes.tgroup(cols=len(head))
            table += group
            group += [nodes.colspec(colwidth=3 if i == 0 else 1) for i in range(len(head))]

            def row(values, literal_first=True):
                r = nodes.row()
                for i, value in enumerate(values):
                    entry = nodes.entry()
                    para = nodes.paragraph()
                    text = str(value)
                    para += nodes.literal(text, text) if i == 0 and literal_first else \
                        nodes.Text(text)
                    entry += para
                    r += entry
                return r

            thead, tbody = nodes.thead(), nodes.tbody()
            thead += row(head, literal_first=False)
            for r in rows:
                tbody += row(r)
            tbody += row(total, literal_first=False)
            group += thead
            group += tbody
            return [table]

    return OutputChecks


def _remember_app(app):
    global _app
    _app = app


def _student_editions():
    """{chapter stem: (student notebook, number of exercises)} for the toc's chapters."""
    import make_exercises
    from chapters import notebook_chapters

    out = {}
    for path in notebook_chapters():
        nb, exercises = make_exercises.student_edition(path)
        if exercises:
            out[path.stem] = (nb, len(exercises))
    return out


def _editions(app):
    """The student editions, made once per build (the page notes and the written files)."""
    if getattr(app, "_cnnbook_editions", None) is None:
        app._cnnbook_editions = _student_editions()
    return app._cnnbook_editions


def _binder_url(app, stem):
    config = app.config.html_theme_options or {}
    repo = (config.get("repository_url") or "").rstrip("/")
    hub = (config.get("launch_buttons") or {}).get("binderhub_url", "https://mybinder.org")
    branch = config.get("repository_branch") or "main"
    if not repo.startswith("https://github.com/"):
        return None
    org_repo = repo[len("https://github.com/"):]
    return (f"{hub.rstrip('/')}/v2/gh/{org_repo}/{branch}"
            f"?urlpath=tree/_build/exercises/{stem}.ipynb")


def _link_student_edition(app, doctree):
    """A note at the top of a chapter with exercises: where its student edition is."""
    from docutils import nodes

    stem = Path(app.env.doc2path(app.env.docname)).stem
    editions = _editions(app)
    if stem not in editions or app.env.docname != f"book/{stem}":
        return
    note = nodes.admonition(classes=["tip", "cnnbook-exercises"])
    note += nodes.title("", "Student edition")
    text = nodes.paragraph()
    text += nodes.Text(f"Write the {editions[stem][1]} functions of this chapter yourself: the "
                       "student edition keeps the prose, the signatures, the docstrings and the "
                       "checks, and leaves the bodies to you. ")
    text += nodes.reference("", f"Download {stem}.ipynb", refuri=f"../exercises/{stem}.ipynb")
    binder = _binder_url(app, stem)
    if binder:
        text += nodes.Text(" or ")
        text += nodes.reference("", "open it on Binder", refuri=binder)
    text += nodes.Text(".")
    note += text
    _insert_below_title(doctree, note)


def _write_student_editions(app, exception):
    import nbformat

    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir) / "exercises"
    out.mkdir(exist_ok=True)
    for stem, (nb, _) in _editions(app).items():
        nbformat.write(nb, out / f"{stem}.ipynb")


def setup(app):
    _remember_app(app)
    app.connect("doctree-read", _link_student_edition)
    app.connect("build-finished", _write_student_editions)
    app.connect("builder-inited", _remember_app)
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("doctree-read", _label_exported_cells)
    app.connect("autodoc-process-docstring", _link_explanation)
    app.connect("doctree-read", _note_data_copy)
    app.add_directive("cnnbook-output-checks", _output_checks_directive())
    _mathjax_dir()  # fail early when the MathJax copy is missing
    return {"parallel_read_safe": True, "parallel_write_safe": True}
