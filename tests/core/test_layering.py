"""scan_core is the bottom floor: it never imports a deep-learning framework (STYLE.md rule 1,
ARCHITECTURE.md). Checked twice: at run time in a clean interpreter, and in the source."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import scan_core

FRAMEWORKS = ("torch", "jax", "jaxlib", "flax", "optax", "tensorflow")
PACKAGE_DIR = pathlib.Path(scan_core.__file__).parent
REPO_ROOT = PACKAGE_DIR.parent

_PROBE = """
import importlib, json, pkgutil, sys
import scan_core
after_package = sorted(m for m in sys.modules if m.split(".")[0] in FRAMEWORKS)
names = sorted(m.name for m in pkgutil.walk_packages(scan_core.__path__, "scan_core."))
for name in names:
    importlib.import_module(name)
after_all = sorted(m for m in sys.modules if m.split(".")[0] in FRAMEWORKS)
print(json.dumps({"after_package": after_package, "after_all": after_all, "modules": names}))
"""


def _fake_frameworks(root: pathlib.Path) -> pathlib.Path:
    """Empty stand-ins for every framework, first on the path: an import of one (even inside
    try/except ImportError) lands in sys.modules whether or not the real one is installed."""
    for name in FRAMEWORKS:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
    return root


def test_importing_scan_core_and_every_submodule_loads_no_framework(tmp_path):
    code = f"FRAMEWORKS = {FRAMEWORKS!r}\n" + _PROBE
    fakes = _fake_frameworks(tmp_path / "fakes")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fakes), str(REPO_ROOT)])}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, check=False, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["after_package"] == []
    assert result["after_all"] == []
    on_disk = {f"scan_core.{p.stem}" for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"}
    assert on_disk <= set(result["modules"])
    assert {"scan_core.pruner", "scan_core.store", "scan_core.comm"} <= set(result["modules"])


def _imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                roots.add(arg.value.split(".")[0])
    return roots


def test_scan_core_sources_import_no_framework():
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) >= 10
    offenders = {str(f.relative_to(REPO_ROOT)): sorted(_imported_roots(f) & set(FRAMEWORKS))
                 for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_scan_core_sources_do_not_import_the_upper_floors():
    upper = {"adapters", "reference_trainers"}
    offenders = {str(f.relative_to(REPO_ROOT)): sorted(_imported_roots(f) & upper)
                 for f in sorted(PACKAGE_DIR.rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_runtime_probe_sees_a_framework_import(tmp_path):
    fakes = _fake_frameworks(tmp_path / "fakes")
    code = f"FRAMEWORKS = {FRAMEWORKS!r}\nimport torch\n" + _PROBE
    env = {**os.environ, "PYTHONPATH": str(fakes)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, check=False, env=env)
    assert json.loads(out.stdout.strip().splitlines()[-1])["after_package"] == ["torch"]


def test_the_source_check_sees_a_framework_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\nfrom torch import nn\nimport jax.numpy as jnp\n"
                     "import importlib\nimportlib.import_module('optax')\n")
    assert _imported_roots(probe) >= {"torch", "jax", "optax", "numpy"}
