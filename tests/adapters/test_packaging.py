"""Installing scan-prune leaves a user's torch and JAX alone, and an adapter without its
framework says which extra to install (issue 17, packaging)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _extra(name: str) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["optional-dependencies"][name]]
    return {r.name: r for r in reqs}


@pytest.mark.parametrize("extra, package, installed", [
    ("torch", "torch", ["2.11.0", "2.13.0", "2.14.1", "2.9.1"]),
    ("jax", "jax", ["0.10.2", "0.11.2"]),
])
def test_an_extra_admits_the_framework_a_user_already_has(extra, package, installed):
    spec = _extra(extra)[package].specifier
    assert not any(s.operator in ("==", "===") for s in spec), f"{package} is pinned: {spec}"
    for version in installed:
        assert spec.contains(version), f"{extra} extra {spec} refuses an installed {version}"


def test_this_projects_machines_get_the_cpu_pin_through_constraints():
    pins = {Requirement(line).name: Requirement(line)
            for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert str(pins["torch"].specifier) == "==2.13.0"
    for name, req in pins.items():  # every pin lies inside the range a user gets
        extra = _extra("torch") | _extra("jax")
        if name in extra:
            assert extra[name].specifier.contains(next(iter(req.specifier)).version)
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_an_adapter_without_its_framework_names_the_extra(framework):
    code = (f"import sys; sys.modules[{framework!r}] = None\n"  # as if it were not installed
            f"import adapters.{framework}\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError"), result.stderr
    assert f"pip install 'scan-prune[{framework}]'" in last
    assert f"adapters.{framework} needs '{framework}'" in last
