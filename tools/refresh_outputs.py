#!/usr/bin/env python3
"""Execute chapters and store their outputs as the reference the tests compare against.

    python tools/refresh_outputs.py                    # every chapter in _toc.yml
    python tools/refresh_outputs.py book/fc_layers.md  # just these

Each chapter runs top to bottom in a fresh ``python3`` kernel whose working
directory is the chapter's folder and whose ``PYTHONPATH`` starts with the
repository's ``src`` (so ``import cnnbook`` gets the tangled package: run
``python tools/tangle.py`` first).  The code cells and their outputs are written
to ``book/_reference/NAME.ipynb``.  Review the diff of the reference before you
commit it: it is what the book shows and what CI will demand.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapters import (  # noqa: E402
    DATA_TAG,
    ROOT,
    ChapterError,
    chapter_timeout,
    code_cells,
    data_cells,
    kernel_environment,
    notebook_chapters,
    read_chapter,
    reference_json,
    reference_path,
    rel,
    source_digest,
)


def merge_streams(outputs):
    """Join consecutive stdout (or stderr) outputs: how a cell's printing is split into
    messages depends on timing, and the reference should not."""
    merged = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if out.output_type == "stream" and prev is not None and prev.output_type == "stream" and prev.name == out.name:
            prev.text += out.text
        else:
            merged.append(out)
    return merged


# Run in the chapter's kernel after its last cell: which CIFAR-10 copies did it read?
_DATA_PROBE = """\
import json as _json, sys as _sys
_data = _sys.modules.get("cnnbook.data")
print(_json.dumps(_data.loaded_fingerprints() if hasattr(_data, "loaded_fingerprints") else []))
"""


def data_fingerprint(chapter: Path, ref, loaded: list) -> str | None:
    """The fingerprint to store with a chapter's reference, after checking the chapter's tags.

    ``loaded`` lists the CIFAR-10 copies the chapter's kernel read (``loaded_fingerprints()``).
    A chapter that reads CIFAR-10 must tag the cells whose outputs depend on it, and a chapter
    with such tags must read it; reading two different copies is an error too.
    """
    tagged = data_cells(ref)
    if len(loaded) > 1:
        raise ChapterError(f"{rel(chapter)} read several CIFAR-10 copies: {', '.join(loaded)}")
    if loaded and not tagged:
        raise ChapterError(
            f"{rel(chapter)} reads CIFAR-10 (copy {loaded[0]}) but no code cell is tagged "
            f"{DATA_TAG!r}: tag the cells whose outputs depend on the data (CONTRIBUTING.md)"
        )
    if tagged and not loaded:
        raise ChapterError(
            f"{rel(chapter)} tags code cells {tagged} {DATA_TAG!r} but never loads CIFAR-10 "
            "with cnnbook.data.load_cifar10"
        )
    return loaded[0] if loaded else None


def execute(chapter: Path, root: Path = ROOT):
    """Run a chapter in a fresh kernel; return the reference notebook (code cells + outputs)."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = read_chapter(chapter)
    ref = nbformat.v4.new_notebook()
    ref.metadata["kernelspec"] = nb.metadata.get("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    ref.metadata["language_info"] = {"name": "python"}
    ref.cells = [nbformat.v4.new_code_cell(c.source, metadata=dict(c.metadata)) for c in code_cells(nb)]
    for cell in ref.cells:
        cell.pop("id", None)
    ref.cells.append(nbformat.v4.new_code_cell(_DATA_PROBE))
    km = KernelManager(kernel_name=ref.metadata["kernelspec"].get("name", "python3"))
    km.start_kernel(cwd=str(Path(chapter).parent), env=kernel_environment(root=root))
    try:
        client = NotebookClient(
            ref,
            km=km,
            timeout=chapter_timeout(nb),
            record_timing=False,
            allow_errors=False,
        )
        client.execute(cleanup_kc=True)
    finally:
        if km.is_alive():
            km.shutdown_kernel(now=True)
    probe = ref.cells.pop()
    loaded = json.loads("".join(o.get("text", "") for o in probe.outputs if o.get("name") == "stdout"))
    for cell in ref.cells:
        cell.outputs = merge_streams(cell.outputs)
    ref.metadata["cnnbook"] = {
        "chapter": rel(chapter),
        "code_digest": source_digest([c.source for c in ref.cells]),
        "note": "Reference outputs made by tools/refresh_outputs.py; do not edit by hand.",
    }
    fingerprint = data_fingerprint(chapter, ref, loaded)
    if fingerprint is not None:
        ref.metadata["cnnbook"]["data_fingerprint"] = fingerprint
    ref.nbformat_minor = 4  # no cell ids: stable, readable diffs
    return ref


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter files (default: every notebook chapter in _toc.yml)")
    args = parser.parse_args(argv)
    targets = [p.resolve() for p in args.chapters] or notebook_chapters()
    for chapter in targets:
        if chapter.suffix != ".md" or not chapter.exists():
            print(f"refresh_outputs: {chapter} is not a chapter file", file=sys.stderr)
            return 2
        start = time.perf_counter()
        try:
            ref = execute(chapter)
        except ChapterError as exc:
            print(f"refresh_outputs: {exc}", file=sys.stderr)
            return 1
        out = reference_path(chapter)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(reference_json(ref), encoding="utf-8")
        data = ref.metadata["cnnbook"].get("data_fingerprint")
        note = f", CIFAR-10 copy {data}" if data else ""
        print(f"wrote {rel(out)} ({len(ref.cells)} code cells{note}, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
