"""Issue 17's done-when run for the JAX CLIP trainer, as an open_clip user types it: a 2-shard
img2dataset-style set in a read-only folder (tests/trainers/test_readme_own_data.py builds it
from Fashion-MNIST), README's tokenizer line, then `--framework jax --train-data
'DIR/{00000..00001}.tar' --imagenet-val VAL --val-data 'HELD/{00000..00001}.tar' --workers 2
--report-to tensorboard`, stopped after one epoch and resumed: zero-shot and retrieval numbers come out, the TensorBoard events exist, the
dataset folder is only read, and neither the trainer nor its decode workers import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")
PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("braceexpand")
pytest.importorskip("tensorboard")

from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR  # noqa: E402

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                                reason="Fashion-MNIST not installed")


def held_shards(held_csv: Path, out: Path) -> Path:
    """The held-out CSV's pairs as 2 img2dataset-style shards (.png, .txt, .json members)."""
    from tests.trainers.test_readme_own_data import _write_tar

    rows = [line.split(",", 1) for line in held_csv.read_text().splitlines()[1:]]
    out.mkdir()
    half = (len(rows) + 1) // 2
    for s, part in enumerate((rows[:half], rows[half:])):
        members = []
        for j, (image, caption) in enumerate(part):
            key = f"{s:05d}{j:04d}"
            members += [(f"{key}.png", (held_csv.parent / image).read_bytes()),
                        (f"{key}.txt", caption.encode()),
                        (f"{key}.json", json.dumps({"key": key}).encode())]
        _write_tar(out / f"{s:05d}.tar", members)
    return out


def torch_trap(folder: Path) -> Path:
    """A `torch` package that records being imported (then fails, as a missing torch would):
    first on PYTHONPATH, it stands in for the real one in the trainer and its workers."""
    (folder / "torch").mkdir(parents=True)
    marker = folder / "torch-was-imported"
    (folder / "torch" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'a').write('imported\\n')\n"
        "raise ImportError('torch imported by a JAX run')\n")
    return marker


@pytest.mark.slow  # two JAX trainer processes with two decode workers each: 60 s on 2 cores
def test_the_done_when_run_trains_and_evaluates_a_read_only_shard_set_in_jax(tmp_path):
    from tests.trainers.test_readme_own_data import _own_data

    paths = _own_data(tmp_path)
    data, val = paths["DATA"], paths["VAL"]
    held = held_shards(paths["HELD.csv"], tmp_path / "held-shards")
    marker = torch_trap(tmp_path / "trap")
    for folder in (data, held):
        for path in folder.iterdir():
            os.chmod(path, 0o444)
        os.chmod(folder, 0o555)
    listing = sorted(p.name for p in data.iterdir())
    shards = f"{data}/{{00000..00001}}.tar"
    tokenizer = [sys.executable, "-m", "reference_trainers.common.corpora.train_tokenizer",
                 "--from-shards", shards, "--out", str(tmp_path / "tok.json")]
    command = [sys.executable, "-m", "reference_trainers.clip", "--framework", "jax",
               "--train-data", shards, "--tokenizer", f"bpe:{tmp_path / 'tok.json'}",
               "--imagenet-val", str(val), "--val-data", f"{held}/{{00000..00001}}.tar",
               "--workers", "2", "--report-to", "tensorboard", "--logs", str(tmp_path / "runs"),
               "--name", "mine", "--epochs", "2", "--batch-size", "32", "--threads", "1",
               "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "trap"), str(ROOT)])}
    outputs = []
    try:  # README's order: the tokenizer, a run interrupted after an epoch, its resume
        for argv in (tokenizer, command + ["--stop-after", "1"], command + ["--resume", "latest"]):
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, done.stderr[-3000:]
            outputs.append(done.stdout)
        outputs = outputs[1:]
    finally:
        for folder in (data, held):
            os.chmod(folder, 0o755)
    assert not marker.exists(), "torch was imported"
    assert sorted(p.name for p in data.iterdir()) == listing  # only read
    assert all("--workers 2: " in out and "decoded in 2 worker processes" in out
               for out in outputs)
    run = tmp_path / "runs" / "mine"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["samples"] == r["num_kept"] == 96 for r in rows)
    last = rows[-1]
    assert 0.0 <= last["zero_shot_top1"] <= last["zero_shot_top5"] <= 1.0
    for side in ("image_to_text", "text_to_image"):
        assert 0.0 <= last[f"{side}_R@1"] <= last[f"{side}_R@5"] <= last[f"{side}_R@10"] <= 1.0
    assert last["image_to_text_R@10"] > 0  # 20 held-out pairs: R@10 of chance is 0.5
    summary = json.loads((run / "summary.json").read_text())
    assert summary["zero_shot_top1"] == last["zero_shot_top1"]
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run / "scan-index.npz").is_file() and (run / "scan-val-index.npz").is_file()
    config = json.loads((run / "config.json").read_text())
    assert (config["framework"], config["workers"], config["report_to"]) == ("jax", 2,
                                                                           "tensorboard")
