"""The trainers follow the floors (ARCHITECTURE.md, issue 16): a module imports only from its
own floor or the floors below it, and the PyTorch and JAX trainers never import each other.
Read from the source (every import, also one inside a function), so it costs nothing to run.

Floors of reference_trainers, lowest first:
- shared: common/ without its PyTorch modules: numpy only, read by both frameworks;
- torch-models: models/ (the paper's towers, CLIP itself);
- torch: the PyTorch trainers (clip/, moco/) and the torch modules of common/;
- jax: the JAX trainers (jax/), beside torch, never importing it;
- experiments: the suites, on top of both;
- commands: the `__main__` modules, which pick a trainer by --framework, and `export`
  (a trained checkpoint out to open_clip).
"""

from __future__ import annotations

import ast
import pathlib

import reference_trainers

PACKAGE_DIR = pathlib.Path(reference_trainers.__file__).parent
REPO_ROOT = PACKAGE_DIR.parent

# common/'s modules that import torch. In common/corpora/ only the map-style readers that
# return torch batches (CsvCorpus, ImageFolderCorpus) and the commands built on them do; the
# images, the shard index and stream, the URL sources and the numpy arrays the JAX trainer
# reads (arrays.py) are shared.
TORCH_COMMON = {"common.accel", "common.augment", "common.evaluation", "common.lifecycle",
                "common.torch_data", "common.workers", "common.user_eval",
                *(f"common.corpora.{m}" for m in ("csv_corpus", "folder_corpus", "make_shards"))}

MAY_IMPORT = {
    "shared": {"shared"},
    "torch-models": {"shared", "torch-models"},
    "torch": {"shared", "torch-models", "torch"},
    "jax": {"shared", "jax"},
    "experiments": {"shared", "torch-models", "torch", "jax", "experiments"},
    "commands": {"shared", "torch-models", "torch", "jax", "experiments", "commands"},
}


def floor_of(module: str) -> str:
    """The floor of a module named relative to reference_trainers ("common.loop")."""
    if module in ("", "__init__"):
        return "shared"
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "commands"
    top = parts[0]
    if top == "common":
        return "torch" if any(module == t or module.startswith(t + ".")
                              for t in TORCH_COMMON) else "shared"
    return {"models": "torch-models", "clip": "torch", "moco": "torch", "jax": "jax",
            "experiments": "experiments", "export": "commands"}[top]


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, root: pathlib.Path) -> set[str]:
    """reference_trainers modules `path` imports, relative names ("clip.model"); `from
    reference_trainers.x import y` counts as x.y when x/y.py exists, else x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            sub = root.joinpath(*node.module.split(".")[1:])
            names += [f"{node.module}.{a.name}" for a in node.names
                      if (sub / f"{a.name}.py").exists() or (sub / a.name).is_dir()]
        for name in names:
            if name == "reference_trainers" or name.startswith("reference_trainers."):
                found.add(name.removeprefix("reference_trainers").lstrip("."))
    return found


def violations(root: pathlib.Path) -> dict[str, list[str]]:
    """{module (floor): [what it imports from a floor it may not (that floor)]} under root."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        floor = floor_of(module)
        bad = sorted(f"{m} ({floor_of(m)})" for m in _imports(path, root)
                     if floor_of(m) not in MAY_IMPORT[floor])
        if bad:
            out[f"{module} ({floor})"] = bad
    return out


def test_no_trainer_module_imports_a_higher_floor_or_the_other_framework():
    assert len(list(PACKAGE_DIR.rglob("*.py"))) > 50
    assert violations(PACKAGE_DIR) == {}


def test_every_module_has_a_floor():
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        assert floor_of(_module_name(path, PACKAGE_DIR)) in MAY_IMPORT, path


def test_the_check_sees_an_import_up_a_floor(tmp_path):
    """Planted files: a shared module importing a torch trainer, and a JAX module importing
    the PyTorch one's model (each inside a function), are reported; a downward import is not."""
    root = tmp_path / "reference_trainers"
    for sub, text in {
        "common/leaky.py": "def f():\n    from reference_trainers.clip.model import CLIP\n",
        "jax/leaky.py": "def f():\n    import reference_trainers.moco.model\n",
        "clip/fine.py": "from reference_trainers.common import loop\n",
    }.items():
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        (root / sub).write_text(text)
    (root / "clip" / "model.py").write_text("")
    found = violations(root)
    assert found == {"common.leaky (shared)": ["clip.model (torch)"],
                     "jax.leaky (jax)": ["moco.model (torch)"]}
