"""What `pip install .` pulls in, per platform (pyproject.toml's environment markers): the CUDA
build of onnxruntime only on Linux x86_64, the CPU build elsewhere, never both; no scikit-learn
(the builtin data sets ship as package data); TensorBoard's writer as an extra."""

from __future__ import annotations

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")
from packaging.requirements import Requirement  # noqa: E402 - after the skip

PLATFORMS = {  # (sys_platform, platform_machine) -> the onnxruntime distribution expected
    ("linux", "x86_64"): "onnxruntime-gpu",
    ("linux", "aarch64"): "onnxruntime",
    ("darwin", "arm64"): "onnxruntime",
    ("darwin", "x86_64"): "onnxruntime",
    ("win32", "AMD64"): "onnxruntime",
}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _installed(requirements: list[str], platform: str, machine: str) -> set[str]:
    env = {"sys_platform": platform, "platform_machine": machine, "python_version": "3.11"}
    reqs = [Requirement(r) for r in requirements]
    return {r.name for r in reqs if r.marker is None or r.marker.evaluate(env)}


@pytest.mark.parametrize("platform,machine", sorted(PLATFORMS))
def test_one_onnxruntime_per_platform(platform, machine):
    names = _installed(_project()["dependencies"], platform, machine)
    runtimes = {n for n in names if n.startswith("onnxruntime")}
    assert runtimes == {PLATFORMS[platform, machine]}


def test_scikit_learn_is_optional():
    project = _project()
    assert not any(Requirement(r).name == "scikit-learn" for r in project["dependencies"])
    extras = project["optional-dependencies"]
    assert [Requirement(r).name for r in extras["sklearn"]] == ["scikit-learn"]
    assert [Requirement(r).name for r in extras["tensorboard"]] == ["tensorboardX"]


def test_serve_extra_installs_the_server_only():
    """`pip install 'dlc[serve]'` brings Starlette and uvicorn, as the README says; selenium
    drives the browser test and belongs to the dev extra alone."""
    extras = _project()["optional-dependencies"]
    assert [Requirement(r).name for r in extras["serve"]] == ["starlette", "uvicorn"]
    assert "selenium" in [Requirement(r).name for r in extras["dev"]]


def test_package_never_imports_scikit_learn():
    """Only comments and docstrings may name it: no import of sklearn anywhere in dlc/."""
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "dlc").rglob("*.py")
            if any(line.lstrip().startswith(("import sklearn", "from sklearn"))
                   for line in p.read_text().splitlines())]
    assert hits == []
