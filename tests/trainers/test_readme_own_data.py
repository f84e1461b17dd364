"""README "Your own data": its commands run as written (with --epochs 2 added for time) on a
2-shard img2dataset-style set, a labelled tree and held-out pairs made from Fashion-MNIST, and
zero-shot, retrieval and TensorBoard numbers come out."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("braceexpand")
pytest.importorskip("tensorboard")

from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR, read_idx  # noqa: E402

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                                reason="Fashion-MNIST not installed")
NAMES = {0: "t-shirt", 1: "trouser", 8: "bag", 9: "ankle boot"}


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _own_data(root: Path) -> dict[str, Path]:
    images = read_idx(Path(DEFAULT_FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[:400]
    labels = read_idx(Path(DEFAULT_FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz")[:400]
    ids = np.flatnonzero(np.isin(labels, list(NAMES)))
    data, val, held = root / "data", root / "val", root / "held"
    for d in (data, val, held):
        d.mkdir()
    train_ids, val_ids, held_ids = ids[:96], ids[96:120], ids[120:140]
    for s in range(2):
        members = []
        for j, i in enumerate(train_ids[48 * s: 48 * (s + 1)]):
            key = f"{s:05d}{j:04d}"
            members += [(f"{key}.jpg", _jpeg(images[i])),
                        (f"{key}.txt", f"a photo of a {NAMES[int(labels[i])]}".encode()),
                        (f"{key}.json", json.dumps({"key": key}).encode())]
        _write_tar(data / f"{s:05d}.tar", members)
        (data / f"{s:05d}_stats.json").write_text("{}")
    for i in val_ids:
        folder = val / NAMES[int(labels[i])].replace(" ", "_")
        folder.mkdir(exist_ok=True)
        PIL.fromarray(images[i]).save(folder / f"{i}.png")
    rows = ["image,caption"]
    for i in held_ids:
        PIL.fromarray(images[i]).save(held / f"{i}.png")
        rows.append(f"{i}.png,a photo of a {NAMES[int(labels[i])]}")
    (held / "HELD.csv").write_text("\n".join(rows) + "\n")
    return {"DATA": data, "VAL": val, "HELD.csv": held / "HELD.csv"}


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own data"):]
    block = re.findall(r"```\n(.*?)```", section, flags=re.S)[0]
    return [line for line in block.splitlines() if line.startswith("python -m")]


@pytest.mark.slow  # three trainer processes: about 80 s on the shared 2-core box
def test_the_readme_own_data_commands_train_and_evaluate(tmp_path):
    commands = _readme_commands()
    assert 1 <= len(commands) <= 6
    paths = _own_data(tmp_path)
    for path in paths["DATA"].iterdir():
        os.chmod(path, 0o444)
    os.chmod(paths["DATA"], 0o555)
    listing = sorted(p.name for p in paths["DATA"].iterdir())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        for k, command in enumerate(commands):
            for name, path in paths.items():
                command = re.sub(rf"(?<![\w/]){re.escape(name)}(?=[/ ']|$)", str(path), command)
            argv = shlex.split(command)
            argv[0] = sys.executable
            if "reference_trainers.clip" in argv:
                argv += ["--epochs", "2", "--batch-size", "32", "--threads", "1", "--quiet"]
                if "--resume" not in argv:
                    argv += ["--stop-after", "1"]  # interrupted: the next line continues it
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, (command, done.stderr[-2000:])
    finally:
        os.chmod(paths["DATA"], 0o755)
    assert sorted(p.name for p in paths["DATA"].iterdir()) == listing
    run = tmp_path / "runs" / "mine"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert 0.0 <= last["zero_shot_top1"] <= 1.0 and 0.0 <= last["zero_shot_top5"] <= 1.0
    assert 0.0 <= last["image_to_text_R@1"] <= last["image_to_text_R@10"] <= 1.0
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["samples"] == r["num_kept"] for r in rows)
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run / "scan-index.npz").is_file()
