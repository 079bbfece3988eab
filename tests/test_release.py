"""One address, one version, a release that installs.

- The repository and site addresses are written once, in pyproject.toml's [project.urls];
  _config.yml (repository and Binder buttons, canonical URLs, the page footer), README.md and
  every other file that names the project's address agree with them.
- The version is one: book/preface.md -> src/cnnbook/__init__.py (tangled) -> the wheel
  (hatch reads it) -> the tag (tools/check_release.py, run by the release workflow), and
  CHANGELOG.md has an entry for it.
- The sdist alone builds a wheel that installs into a fresh venv, imports every module and
  passes `twine check --strict` (slow).
"""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import time

import pytest
import yaml

from _support import ROOT, WHEELHOUSE, clean_env, fresh_venv, pip_offline, run, skip_or_fail

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

import check_release

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
URLS = PYPROJECT["project"]["urls"]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
CHECK = ROOT / "tools" / "check_release.py"


def source_parts() -> tuple[str, str]:
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", URLS["Source"])
    assert match, f"[project.urls] Source {URLS['Source']!r} is not https://github.com/OWNER/REPO"
    return match.group(1), match.group(2)


# --- one address -------------------------------------------------------------------------


def test_project_urls_are_the_repository_and_its_site():
    owner, repo = source_parts()
    assert set(URLS) >= {"Homepage", "Documentation", "Source", "Issues"}
    # the site is the repository's GitHub Pages site (published by .github/workflows/site.yml)
    assert URLS["Homepage"] == f"https://{owner.lower()}.github.io/{repo}/"
    assert URLS["Documentation"] == URLS["Homepage"]
    assert URLS["Issues"] == URLS["Source"] + "/issues"
    assert URLS.get("Changelog", URLS["Source"]).startswith(URLS["Source"] + "/")


def test_book_config_uses_the_project_urls():
    assert CONFIG["repository"]["url"] == URLS["Source"]  # repository button, Binder buttons
    assert CONFIG["repository"]["branch"] == "main"  # the branch site.yml publishes
    assert CONFIG["launch_buttons"]["binderhub_url"]
    assert CONFIG["html"]["baseurl"] == URLS["Homepage"]  # canonical links of the pages
    footer = CONFIG["html"]["extra_footer"]
    for key in ("Homepage", "Source", "Issues"):
        assert f'href="{URLS[key]}"' in footer, f"the page footer has no link to {key}"


def test_readme_names_the_site_and_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert URLS["Homepage"] in readme and URLS["Source"] in readme


def test_every_mention_of_the_project_address_is_the_one_of_pyproject():
    """A URL of the project (any owner, on GitHub or GitHub Pages) in any tracked text file is
    one of [project.urls] or below one; a moved repository leaves no stale address behind."""
    _, repo = source_parts()
    pattern = re.compile(
        rf"https?://(?:github\.com/[\w.-]+/{re.escape(repo)}|[\w-]+\.github\.io/{re.escape(repo)})"
        r"(?![\w.-])[^\s\"'<>)\]`*]*", re.I)
    bases = (URLS["Source"], URLS["Homepage"].rstrip("/"))
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    wrong = []
    for name in files:
        path = ROOT / name
        if name.startswith("book/_reference/") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in pattern.finditer(text):
            url = match.group(0).rstrip(".,;:")
            if not any(url == base or url.startswith(base + "/") for base in bases):
                wrong.append(f"{name}: {url}")
    assert not wrong, ("addresses that differ from [project.urls] in pyproject.toml:\n"
                       + "\n".join(wrong))


# --- one version -------------------------------------------------------------------------


def test_version_is_read_from_the_tangled_init():
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "src/cnnbook/__init__.py"
    assert "version" in PYPROJECT["project"]["dynamic"]
    version = check_release.package_version()
    preface = (ROOT / "book" / "preface.md").read_text()
    assert f'__version__ = "{version}"' in preface.splitlines()


def test_tag_of_the_version_passes():
    version = check_release.package_version()
    proc = subprocess.run([sys.executable, CHECK, "--tag", f"v{version}"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"v{version}" in proc.stdout
    # as the release workflow may also pass GITHUB_REF
    assert check_release.check_tag(f"refs/tags/v{version}") == version


def bumped(version: str) -> str:
    major, minor, patch = re.match(r"(\d+)\.(\d+)\.(\d+)", version).groups()
    return f"{major}.{minor}.{int(patch) + 1}"


@pytest.mark.parametrize("make_tag, message", [
    (lambda v: f"v{bumped(v)}", "does not match the package version"),
    (lambda v: v, "is not a release tag"),
    (lambda v: f"release-{v}", "is not a release tag"),
    (lambda v: f"v{v}-dirty", "is not a release tag"),
])
def test_other_tags_fail_with_a_clear_message(make_tag, message):
    version = check_release.package_version()
    tag = make_tag(version)
    proc = subprocess.run([sys.executable, CHECK, "--tag", tag], capture_output=True, text=True)
    assert proc.returncode == 1
    assert message in proc.stderr and repr(tag) in proc.stderr and version in proc.stderr, (
        proc.stderr)


def test_version_without_changelog_entry_fails(tmp_path):
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text("# Changelog\n\n## [Unreleased]\n\n## [0.0.9] - 2026-01-01\n")
    version = check_release.package_version()
    with pytest.raises(check_release.ReleaseError, match=f"no entry for {re.escape(version)}"):
        check_release.check_tag(f"v{version}", changelog=changelog)


def test_malformed_version_is_named(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text('__version__ = "0.1"\n')
    with pytest.raises(check_release.ReleaseError, match="'0.1'"):
        check_release.package_version(init)


def test_changelog_has_the_current_version():
    version = check_release.package_version()
    assert version in check_release.changelog_versions()
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text  # Keep a Changelog: where the next changes go
    notes = check_release.release_notes(version)
    # the section alone, with content
    assert len(notes.split()) > 20 and "\n## " not in "\n" + notes
    # every version has its link, to this repository
    for v in check_release.changelog_versions():
        assert re.search(rf"^\[{re.escape(v)}\]: {re.escape(URLS['Source'])}/", text, re.M), v


def test_module_list_is_the_source_files():
    names = check_release.module_names()
    assert names[0] == "cnnbook" and "cnnbook.layers" in names and "cnnbook.data" in names
    assert len(names) == len(list((ROOT / "src" / "cnnbook").glob("*.py")))


# --- the sdist builds a working wheel on its own -------------------------------------------


def offline_build_env() -> dict:
    """pip (inside `python -m build`'s isolated environments) installs hatchling from the
    wheelhouse that tools/setup.sh downloads, without the network."""
    return clean_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(WHEELHOUSE),
                     PIP_DISABLE_PIP_VERSION_CHECK="1")


@pytest.mark.slow
def test_sdist_builds_a_wheel_that_installs_and_imports(tmp_path):
    for tool in ("build", "twine"):
        if subprocess.run([sys.executable, "-c", f"import {tool}"]).returncode:
            skip_or_fail(f"{tool} is missing: `bash tools/setup.sh` installs it (dev extra)")
    if not WHEELHOUSE.is_dir():
        skip_or_fail(f"{WHEELHOUSE} is missing: run `bash tools/setup.sh`")
    start = time.perf_counter()
    version = check_release.package_version()
    # 1. the sdist, from the repository
    run([sys.executable, "-m", "build", "--sdist", "--outdir", tmp_path / "sdist", ROOT],
        env=offline_build_env())
    (sdist,) = (tmp_path / "sdist").glob("*.tar.gz")
    assert sdist.name == f"cnnbook-{version}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and the 3.9-3.11 security releases
            tar.extractall(tmp_path / "unpacked", filter="data")
        else:
            tar.extractall(tmp_path / "unpacked")
    sources = {f"src/cnnbook/{p.name}" for p in (ROOT / "src" / "cnnbook").glob("*.py")}
    assert sources <= names and {"pyproject.toml", "README.md", "LICENSE"} <= names
    assert not [n for n in names if n.startswith(("book/", "tests/", "tools/", "_build"))]
    # 2. the wheel, from the unpacked sdist alone
    unpacked = tmp_path / "unpacked" / f"cnnbook-{version}"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "wheel", unpacked],
        env=offline_build_env(), cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    assert wheel.name == f"cnnbook-{version}-py3-none-any.whl"
    run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel])
    # 3. the wheel in a fresh venv: every module of src/cnnbook imports, from the venv
    py = fresh_venv(tmp_path / "venv")
    pip_offline(py, wheel)
    out = run([py, CHECK, "--import-all"], cwd=tmp_path).stdout
    assert f"imported {len(check_release.module_names())} modules" in out, out
    print(f"sdist -> wheel -> fresh venv -> import: {time.perf_counter() - start:.1f} s")
