"""The API reference part of the book has one page per module of the package, in the toc."""
import pkgutil

import cnnbook

from _support import ROOT

from chapters import chapters


def test_every_module_has_an_api_page_in_the_toc():
    modules = {m.name for m in pkgutil.iter_modules(cnnbook.__path__)}
    pages = {p.stem for p in chapters() if p.parent.name == "api"}
    assert pages == modules, (sorted(modules - pages), sorted(pages - modules))
    for name in modules:
        text = (ROOT / "book" / "api" / f"{name}.md").read_text()
        assert f".. automodule:: cnnbook.{name}" in text, name
