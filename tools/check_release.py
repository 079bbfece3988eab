#!/usr/bin/env python
"""Checks the release workflow (.github/workflows/release.yml) runs; standard library only.

Usage (from the repository root, or from anywhere: paths are the repository's)::

    python tools/check_release.py --tag v0.1.0    # exit 0 iff the tag is v + the package
                                                  # version and CHANGELOG.md has its entry
    python tools/check_release.py --version       # print the package version
    python tools/check_release.py --notes         # print its CHANGELOG.md section (the
                                                  # GitHub release's notes)
    python tools/check_release.py --import-all    # import every module of the *installed*
                                                  # cnnbook (run with a fresh venv's python)

The package version is ``__version__`` in ``src/cnnbook/__init__.py``, which tools/tangle.py
generates from ``book/preface.md``; ``[tool.hatch.version]`` in pyproject.toml reads the same
line, so the version of the wheel, of the book and of the tag are one.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INIT = ROOT / "src" / "cnnbook" / "__init__.py"
CHANGELOG = ROOT / "CHANGELOG.md"

# A release version: MAJOR.MINOR.PATCH, optionally a pre-release such as 1.0.0rc1 (PEP 440).
VERSION_RE = r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?"


class ReleaseError(Exception):
    """A release check failed; the message says what to do."""


def package_version(init: Path = INIT) -> str:
    """``__version__`` of the package, read from its source (without importing it)."""
    text = init.read_text(encoding="utf-8")
    found = re.findall(r'^__version__ = "([^"]*)"$', text, flags=re.M)
    if len(found) != 1:
        raise ReleaseError(f"{init} must define __version__ = \"X.Y.Z\" exactly once "
                           f"(found {len(found)} definitions)")
    if not re.fullmatch(VERSION_RE, found[0]):
        raise ReleaseError(f"the package version {found[0]!r} in {init} is not of the form "
                           "X.Y.Z (e.g. 0.1.0)")
    return found[0]


def changelog_versions(changelog: Path = CHANGELOG) -> list[str]:
    """The versions that have an entry (``## [X.Y.Z] - YYYY-MM-DD``) in the changelog."""
    text = changelog.read_text(encoding="utf-8")
    return re.findall(rf"^## \[({VERSION_RE})\] - \d{{4}}-\d{{2}}-\d{{2}}\s*$", text, flags=re.M)


def release_notes(version: str, changelog: Path = CHANGELOG) -> str:
    """The body of the changelog section of ``version`` (without its heading)."""
    text = changelog.read_text(encoding="utf-8")
    heading = re.search(rf"^## \[{re.escape(version)}\] - .*$", text, flags=re.M)
    if heading is None:
        raise ReleaseError(f"{changelog.name} has no entry for {version}")
    end = re.search(r"^## |^\[[^\]]+\]: ", text[heading.end():], flags=re.M)
    body = text[heading.end():heading.end() + end.start()] if end else text[heading.end():]
    return body.strip() + "\n"


def check_tag(tag: str, init: Path = INIT, changelog: Path = CHANGELOG) -> str:
    """Return the version if ``tag`` is ``v`` + the package version and the changelog has an
    entry for it; raise ReleaseError saying what differs otherwise."""
    version = package_version(init)
    tag = tag.strip()
    if tag.startswith("refs/tags/"):  # GITHUB_REF rather than GITHUB_REF_NAME
        tag = tag[len("refs/tags/"):]
    if not re.fullmatch(rf"v{VERSION_RE}", tag):
        raise ReleaseError(f"the tag {tag!r} is not a release tag: release tags are v + the "
                           f"package version, here v{version}")
    if tag != f"v{version}":
        raise ReleaseError(
            f"the tag {tag!r} does not match the package version {version} (__version__ in "
            f"{INIT.relative_to(ROOT)}, generated from book/preface.md). Either tag v{version}, "
            f"or set __version__ = \"{tag[1:]}\" in book/preface.md, run tools/tangle.py and "
            "tools/refresh_outputs.py book/preface.md, add a CHANGELOG.md entry, commit, and tag "
            "that commit"
        )
    if version not in changelog_versions(changelog):
        raise ReleaseError(f"{changelog.name} has no entry for {version}: add a section "
                           f"'## [{version}] - YYYY-MM-DD' saying what the release changes")
    return version


def module_names(package_dir: Path = INIT.parent) -> list[str]:
    """The modules of cnnbook, listed from the source files ``src/cnnbook/*.py``."""
    names = sorted(p.stem for p in package_dir.glob("*.py") if p.stem != "__init__")
    return ["cnnbook"] + [f"cnnbook.{name}" for name in names]


def import_all(package_dir: Path = INIT.parent) -> list[str]:
    """Import every module of cnnbook from the interpreter's own environment (not from the
    repository's ``src``), check its version, and return the module names."""
    # Running this file puts tools/ first on sys.path, never src/; make sure of the rest.
    src = str(package_dir.parent.resolve())
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(src)]
    names = module_names(package_dir)
    for name in names:
        module = importlib.import_module(name)
        where = Path(module.__file__).resolve()
        if where.is_relative_to(package_dir.resolve()):
            raise ReleaseError(f"{name} was imported from the repository ({where}), not from "
                               "the installed package")
    installed = importlib.import_module("cnnbook").__version__
    if installed != package_version(package_dir / "__init__.py"):
        raise ReleaseError(f"the installed cnnbook is version {installed}, the source "
                           f"{package_version(package_dir / '__init__.py')}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--tag", help="a git tag, e.g. v0.1.0 (or refs/tags/v0.1.0)")
    group.add_argument("--version", action="store_true", help="print the package version")
    group.add_argument("--notes", action="store_true",
                       help="print the CHANGELOG.md section of the package version")
    group.add_argument("--import-all", action="store_true",
                       help="import every module of the installed cnnbook")
    args = parser.parse_args(argv)
    try:
        if args.version:
            print(package_version())
        elif args.notes:
            print(release_notes(package_version()), end="")
        elif args.import_all:
            names = import_all()
            print(f"check_release: imported {len(names)} modules of the installed cnnbook: "
                  + ", ".join(names))
        else:
            version = check_tag(args.tag)
            print(f"check_release: tag {args.tag} = package version {version}, "
                  "with a CHANGELOG.md entry")
    except ReleaseError as exc:
        print(f"check_release: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
