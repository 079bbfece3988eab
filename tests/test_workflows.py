"""The GitHub Actions workflows (.github/workflows/): actionlint finds nothing, every action is
pinned (a full commit SHA with its version in a comment, or an exact version), permissions are
least (read at the top, writes only in the job that needs them), each workflow has a
concurrency group, and each workflow has the steps its job is for (the release workflow:
version check, build, twine check, wheel import, PDF, PyPI trusted publishing, GitHub release).
The shell steps that compute the Python version and the CIFAR-10 cache key are run here."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _support import ROOT, skip_or_fail

WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
SHA = re.compile(r"[0-9a-f]{40}")
EXACT_VERSION = re.compile(r"v?\d+\.\d+\.\d+")


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(workflow: dict):
    """(job id, step) for every step of every job."""
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def runs(workflow: dict, job: str | None = None) -> str:
    """The shell scripts of a workflow's (or a job's) steps, joined."""
    return "\n".join(s.get("run", "") for j, s in steps(workflow) if job in (None, j))


def pin_problem(line: str) -> str | None:
    """What is wrong with the pin of a `uses:` line, or None if it is pinned."""
    match = re.match(r"\s*(?:-\s+)?uses:\s*(['\"]?)([^'\"\s#]+)\1\s*(#.*)?$", line)
    if match is None:
        return f"cannot parse {line.strip()!r}"
    ref, comment = match.group(2), (match.group(3) or "")
    if ref.startswith("./"):
        return None  # an action of this repository: pinned by the commit itself
    if ref.startswith("docker://"):
        return None if "@sha256:" in ref else f"{ref}: pin the image by its @sha256: digest"
    if "@" not in ref:
        return f"{ref}: no version"
    name, version = ref.rsplit("@", 1)
    if SHA.fullmatch(version):
        if not re.fullmatch(r"#\s*v?\d+\.\d+\.\d+\S*", comment.strip()):
            return f"{ref}: a commit pin needs its version as a comment (# vX.Y.Z)"
        return None
    if EXACT_VERSION.fullmatch(version):
        return None
    return (f"{ref}: {version!r} is neither a 40-hex commit SHA nor an exact version "
            "(tags and branches like v4 or main move)")


def uses_lines(path: Path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"\s*(?:-\s+)?uses:", line):
            yield number, line


def test_there_are_the_three_workflows():
    assert {p.name for p in FILES} >= {"tests.yml", "site.yml", "release.yml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actionlint(path):
    exe = shutil.which("actionlint") or shutil.which("actionlint",
                                                     path=str(Path(sys.executable).parent))
    if exe is None:
        skip_or_fail("actionlint is missing: `bash tools/setup.sh` installs it (dev extra)")
    proc = subprocess.run([exe, "-no-color", str(path)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, f"actionlint {path.name}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_action_is_pinned(path):
    problems = [f"{path.name}:{n}: {pin_problem(line)}"
                for n, line in uses_lines(path) if pin_problem(line)]
    assert not problems, "\n".join(problems)


def test_one_action_one_pin():
    """An action (repository) is pinned to the same commit in every workflow."""
    pins: dict = {}
    for path in FILES:
        for number, line in uses_lines(path):
            ref = line.split("uses:", 1)[1].split("#")[0].strip().strip("'\"")
            if "@" in ref and not ref.startswith(("./", "docker://")):
                name, version = ref.rsplit("@", 1)
                repo = "/".join(name.split("/")[:2])  # actions/cache/save -> actions/cache
                pins.setdefault(repo, set()).add(version)
    assert {repo: v for repo, v in pins.items() if len(v) > 1} == {}


@pytest.mark.parametrize("line, problem", [
    ("- uses: actions/checkout@v4", "neither a 40-hex"),
    ("- uses: actions/checkout@main", "neither a 40-hex"),
    ("- uses: actions/checkout", "no version"),
    ("- uses: actions/checkout@" + "a" * 40, "needs its version as a comment"),
    ("- uses: actions/checkout@" + "a" * 39 + " # v4.2.2", "neither a 40-hex"),
    ("- uses: docker://alpine:3.20", "sha256"),
])
def test_pin_check_catches(line, problem):
    assert problem in pin_problem(line)


@pytest.mark.parametrize("line", [
    "- uses: actions/checkout@" + "0123456789abcdef" * 2 + "01234567 # v4.2.2",
    "  uses: actions/cache/save@" + "f" * 40 + "  # v5.0.5",
    "- uses: actions/checkout@v4.2.2",
    "- uses: ./.github/actions/local",
])
def test_pin_check_accepts(line):
    assert pin_problem(line) is None


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_permissions_and_concurrency(path):
    workflow = load(path.name)
    assert workflow.get("permissions") in ({}, {"contents": "read"}), (
        f"{path.name}: the top-level permissions must be read-only (contents: read)")
    assert "group" in (workflow.get("concurrency") or {}), f"{path.name}: no concurrency group"
    for job_id, job in workflow["jobs"].items():
        perms = job.get("permissions") or {}
        assert perms != "write-all" and "write-all" not in str(perms), (path.name, job_id)
        if perms.get("id-token") == "write":  # OIDC only for a deployment to an environment
            assert job.get("environment"), f"{path.name}: job {job_id} has id-token without env"
        assert "timeout-minutes" in job, f"{path.name}: job {job_id} has no timeout-minutes"


def test_no_workflow_uses_a_secret():
    """Publishing is by OIDC (trusted publishing), deploying by the job's own token."""
    for path in FILES:
        assert "secrets." not in path.read_text(), f"{path.name} uses a secret"


def python_version() -> str:
    return (ROOT / "binder" / "runtime.txt").read_text().strip().removeprefix("python-")


def run_step(step: dict, tmp_path: Path) -> tuple[dict, dict]:
    """Run a step's shell script as Actions would (bash -e, from the repository); return what
    it wrote to $GITHUB_OUTPUT and $GITHUB_ENV."""
    out, env_file = tmp_path / "output", tmp_path / "env"
    out.write_text(""), env_file.write_text("")
    env = dict(os.environ, GITHUB_OUTPUT=str(out), GITHUB_ENV=str(env_file),
               RUNNER_TEMP=str(tmp_path))
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def parse(path):
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)

    return parse(out), parse(env_file)


def step_by_id(workflow: dict, step_id: str) -> dict:
    found = [s for _, s in steps(workflow) if s.get("id") == step_id]
    assert len(found) == 1, f"no single step with id {step_id!r}"
    return found[0]


@pytest.mark.parametrize("name", ["tests.yml", "site.yml", "release.yml"])
def test_python_is_the_binder_runtime(name, tmp_path):
    workflow = load(name)
    output, _ = run_step(step_by_id(workflow, "python"), tmp_path)
    assert output == {"version": python_version()}
    setups = [s for _, s in steps(workflow)
              if s.get("uses", "").startswith("actions/setup-python")]
    assert setups and all(s["with"]["python-version"] == "${{ steps.python.outputs.version }}"
                          for s in setups)


def test_tests_workflow(tmp_path):
    workflow = load("tests.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert "bash .ci/run" in runs(workflow)
    assert "ubuntu" in workflow["jobs"]["test"]["runs-on"]
    assert workflow["jobs"]["test"]["timeout-minutes"] <= 60  # CI's budget
    # The CIFAR-10 cache is keyed on the published MD5 the loader verifies, and the tests and
    # the chapters' kernels read the cached copy through CNNBOOK_CIFAR10_DIR.
    from cnnbook.data import CIFAR10_FOLDER, CIFAR10_MD5

    output, env = run_step(step_by_id(workflow, "cifar"), tmp_path)
    assert output == {"md5": CIFAR10_MD5}
    assert env["CNNBOOK_CIFAR10_DIR"] == f"{env['CNNBOOK_DATA_DIR']}/{CIFAR10_FOLDER}"
    caches = [s for _, s in steps(workflow) if s.get("uses", "").startswith("actions/cache/")]
    assert len(caches) == 2  # restore, then save right after the download (even if tests fail)
    for cache in caches:
        assert cache["with"]["key"].endswith("${{ steps.cifar.outputs.md5 }}")
        assert cache["with"]["path"] == "${{ runner.temp }}/cnnbook-data/" + CIFAR10_FOLDER
    assert "fetch_cifar10" in runs(workflow)


def test_site_workflow():
    workflow = load("site.yml")
    assert workflow["on"]["push"] == {"branches": ["main"]}
    assert "workflow_dispatch" in workflow["on"]
    text = runs(workflow)
    assert "bash tools/build.sh" in text and "tools/make_exercises.py" in text
    build_uses = [s.get("uses", "") for _, s in steps(workflow)]
    assert any(u.startswith("actions/upload-pages-artifact@") for u in build_uses)
    deploy = workflow["jobs"]["deploy"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]


def test_release_workflow():
    workflow = load("release.yml")
    assert workflow["on"] == {"push": {"tags": ["v*"]}}
    build = runs(workflow, "build")
    for needed in ('tools/check_release.py --tag "$GITHUB_REF_NAME"',
                   "tools/tangle.py --check",
                   "python -m build",
                   "python -m twine check --strict dist/*",
                   "tools/check_release.py --import-all",
                   "bash tools/pdf.sh",
                   "tools/make_exercises.py"):
        assert needed in build, f"release.yml's build job does not run {needed!r}"
    # the version check comes before anything is built
    assert build.index("--tag") < build.index("python -m build") < build.index("twine check")
    # PyPI: trusted publishing from the environment "pypi", no token or password
    pypi = workflow["jobs"]["pypi"]
    assert pypi["environment"]["name"] == "pypi"
    assert pypi["permissions"] == {"id-token": "write"}
    publish = [s for s in pypi["steps"]
               if s.get("uses", "").startswith("pypa/gh-action-pypi-publish@")]
    assert len(publish) == 1 and not {"password", "user"} & set(publish[0].get("with") or {})
    # the GitHub release attaches the PDF and the student editions' zip
    release = workflow["jobs"]["github-release"]
    assert release["permissions"] == {"contents": "write"} and "pypi" in release["needs"]
    (gh,) = [s for s in release["steps"] if s.get("uses", "").startswith("softprops/")]
    files = gh["with"]["files"]
    assert ".pdf" in files and "student-edition" in files and ".zip" in files
    # only the publishing jobs can write anything
    assert workflow["jobs"]["build"].get("permissions") is None


def test_the_harness_reads_the_copy_the_workflow_caches(tmp_path, monkeypatch):
    """The copy that tests.yml downloads (fetch_cifar10 into CNNBOOK_DATA_DIR) is the copy that
    CNNBOOK_CIFAR10_DIR names, which the tests and the chapters' kernels then read; as it is not
    the copy the references were made on, nbval compares data-dependent cells numbers-masked.
    (A synthetic copy stands in for the official download here.)"""
    import json

    from chapters import kernel_environment
    from nbval_chapters import fingerprint_at_hand
    from test_data import make_cifar

    from cnnbook import data

    _, env = run_step(step_by_id(load("tests.yml"), "cifar"), tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    folder, _ = make_cifar(tmp_path / "cnnbook-data")  # where the download step extracts to
    assert data.fetch_cifar10() == folder  # already there: the cached copy is not downloaded
    assert data.find_cifar10(download=False) == folder
    assert kernel_environment()["CNNBOOK_CIFAR10_DIR"] == str(folder)  # not ../shared/cifar10
    stored = {json.loads(p.read_text())["metadata"]["cnnbook"].get("data_fingerprint")
              for p in (ROOT / "book" / "_reference").glob("*.ipynb")} - {None}
    assert stored and fingerprint_at_hand() not in stored  # so: the "sanitized" data mode
