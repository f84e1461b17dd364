"""The JAX CLIP trainer on the user's sources (corpora/arrays.py): csv: and shards: (a brace
pattern over a read-only folder) with a BPE tokenizer, numpy batches decoded per batch, bad
samples served as counted repeats, and no torch imported on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")
PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("braceexpand")

from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR, read_idx  # noqa: E402
from reference_trainers.jax import clip as jax_clip  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                                reason="Fashion-MNIST not installed")
ARGS = ["--framework", "jax", "--preset", "cpu-tiny", "--num-test", "200", "--batch-size", "32",
        "--epochs", "2", "--eval-every", "0", "--threads", "1", "--quiet"]
ROOT = Path(__file__).parents[2]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    """2 shards x 48 Fashion-MNIST samples, no index beside them (as img2dataset leaves them)."""
    from reference_trainers.common.corpora import make_shards

    out = tmp_path_factory.mktemp("jax-shards") / "data"
    assert make_shards.main(["--from-fashion-mnist", "--num-samples", "96",
                             "--samples-per-shard", "48", "--out", str(out)]) == 0
    (out / "scan-index.npz").unlink()
    return out


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    """40 rows: row 3 names a missing file, row 8 an undecodable image."""
    folder = tmp_path_factory.mktemp("jax-csv")
    images = read_idx(Path(DEFAULT_FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[:40]
    rows = ["image,caption"]
    for i in range(40):
        if i == 8:
            (folder / f"{i}.png").write_bytes(b"not a png")
        elif i != 3:
            PIL.fromarray(images[i]).save(folder / f"{i}.png")
        rows.append(f"{i}.png,a photo of a {'shirt' if i % 2 else 'bag'}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


@pytest.mark.slow  # a second JAX compile; the index and URLs are tested in test_shard_urls
def test_jax_clip_trains_on_a_read_only_brace_pattern_of_shards(shards_dir, tmp_path):
    listing = sorted(p.name for p in shards_dir.iterdir())
    os.chmod(shards_dir, 0o555)
    try:
        run = tmp_path / "run"
        assert jax_clip.main(ARGS + ["--data", f"shards:{shards_dir}/shard-{{000000..000001}}.tar",
                                     "--train-num-samples", "96", "--out", str(run)]) == 0
    finally:
        os.chmod(shards_dir, 0o755)
    assert sorted(p.name for p in shards_dir.iterdir()) == listing
    assert (run / "scan-index.npz").is_file()
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["samples"] == r["num_kept"] == 96 and r["skipped_samples"] == 0 for r in rows)
    assert 0.0 <= json.loads((run / "summary.json").read_text())["zero_shot_top1"] <= 1.0


def test_jax_clip_on_a_csv_serves_bad_rows_as_counted_repeats_with_a_bpe_tokenizer(
        pairs_csv, tmp_path):
    from reference_trainers.common.corpora import train_tokenizer

    tok = tmp_path / "tok.json"
    assert train_tokenizer.main(["--from-csv", str(pairs_csv), "--out", str(tok),
                                 "--vocab-size", "300", "--context-length", "16"]) == 0
    run = tmp_path / "run"
    assert jax_clip.main(ARGS + ["--data", f"csv:{pairs_csv}", "--tokenizer", f"bpe:{tok}",
                                 "--batch-size", "20", "--out", str(run)]) == 0  # one shape
    rows = _rows(run)
    # 40 rows, 2 bad: every epoch trains 40 slots (the sampler serves every id during the
    # warm-up), the 2 bad ones as repeats of good ids of their batch.
    assert all(r["samples"] == 40 for r in rows)
    assert rows[-1]["skipped_samples"] == 2 and rows[-1]["repeated_samples"] == 2 * len(rows)
    config = json.loads((run / "config.json").read_text())
    assert (config["framework"], config["tokenizer"]) == ("jax", f"bpe:{tok}")


def test_corpus_arrays_serve_good_ids_for_bad_ones_and_never_import_torch(pairs_csv, tmp_path):
    code = f"""
import sys
import numpy as np
from reference_trainers.common.corpora.arrays import CorpusArrays
from reference_trainers.common.corpora.images import ImageSpec
from reference_trainers.common.tokenizer import Tokenizer
data = CorpusArrays.from_csv({str(pairs_csv)!r}, spec=ImageSpec.cpu(),
                             tokenizer=Tokenizer(context_length=12))
served = data.served_ids(np.array([2, 3, 8, 9]))
images = data.images[served]
assert served.tolist() == [2, 2, 9, 9], served
assert images.shape == (4, 1, 28, 28) and images.dtype == np.uint8
assert (images[0] == images[1]).all() and sorted(data.skipped) == [3, 8], data.skipped
assert data.repeats == 2 and data.tokens.shape == (40, 12)
assert 'torch' not in sys.modules, 'torch imported'
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr


def test_a_pipe_source_is_refused_by_the_jax_trainer_with_the_way_out(shards_dir, tmp_path,
                                                                      capsys):
    source = f"pipe:cat {shards_dir}/shard-000000.tar"
    assert jax_clip.main(ARGS + ["--data", f"shards:{source}", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot seek" in err and "--framework torch" in err
