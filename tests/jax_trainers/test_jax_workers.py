"""`--workers N` for the JAX CLIP trainer (reference_trainers/common/corpora/decode_pool.py):
batches decoded in N spawned processes equal those of N = 0, bad samples found in a worker are
recorded here, pruned samples are never read, a worker that raises or dies is a DataError
naming the sample; the trainer's runs with 0 and 2 workers (and a resumed one) are identical."""

from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import tarfile

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from reference_trainers.common.corpora.arrays import (CorpusArrays, ImageLoader,  # noqa: E402
                                                      serve_batch)
from reference_trainers.common.corpora.decode_pool import (BatchDecoder,  # noqa: E402
                                                          check_worker_count)
from reference_trainers.common.corpora.images import BadSampleError, ImageSpec  # noqa: E402
from reference_trainers.common.errors import DataError, TrainerError  # noqa: E402
from reference_trainers.common.tokenizer import Tokenizer  # noqa: E402
from tests.jax_trainers.decode_readers import (DyingReader, FailingReader,  # noqa: E402
                                               LoggingReader)
from tests.trainers.runfiles import store_log  # noqa: E402

CAPTIONS = ("a photo of a bag.", "a shirt.", "a black sneaker.", "trousers on a chair.")


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    PIL.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def write_csv(folder: pathlib.Path, n: int, *, corrupt=(), missing=()) -> pathlib.Path:
    """n random 28x28 PNGs with captions; ids in `corrupt` are not PNGs (found at decode),
    ids in `missing` name no file (found when the CSV is read)."""
    rows = ["image,caption"]
    pixels = np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    for i in range(n):
        if i in corrupt:
            (folder / f"{i}.png").write_bytes(b"not a png")
        elif i not in missing:
            (folder / f"{i}.png").write_bytes(png(pixels[i]))
        rows.append(f"{i}.png,{CAPTIONS[i % len(CAPTIONS)]}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def write_shards(folder: pathlib.Path, n: int, per_shard: int, corrupt=()) -> pathlib.Path:
    """img2dataset-style shards 00000.tar ...: 9-digit keys, .png and .txt members."""
    folder.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    for s in range(0, n, per_shard):
        with tarfile.open(folder / f"{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(s + per_shard, n)):
                image = b"\x89PNG broken" if i in corrupt else png(pixels[i])
                for name, data in ((f"{i:09d}.png", image),
                                   (f"{i:09d}.txt", CAPTIONS[i % 4].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def corpus(path: pathlib.Path, reader=None) -> CorpusArrays:
    data = CorpusArrays.from_csv(path, spec=ImageSpec.cpu(), tokenizer=Tokenizer(context_length=8))
    if reader is not None:
        data.loader = ImageLoader(reader, data.names, data.spec)
    return data


def reasons(skipped: dict[int, str]) -> list[tuple[int, str]]:
    """skipped's (id, reason) in order, as written: a reason holds no object address
    (corpora/images.decode_image drops Pillow's), so two decodes give the same text."""
    return list(skipped.items())


def run_epochs(data: CorpusArrays, workers: int, epochs: list[list[np.ndarray]]) -> list:
    out = []
    with BatchDecoder(data, workers) as decoder:
        for id_batches in epochs:
            decoder.start_epoch(id_batches)
            out += [decoder.serve(ids) for ids in id_batches]
    return out


class StubLoader:
    """id -> a 1x1x1 image holding the id; ids in `bad` raise BadSampleError."""

    def __init__(self, bad):
        self.bad, self.calls = set(bad), []

    def __call__(self, i: int) -> np.ndarray:
        self.calls.append(i)
        if i in self.bad:
            raise BadSampleError(f"sample {i} is bad")
        return np.full((1, 1, 1), i, np.uint8)


@given(st.lists(st.integers(0, 60), min_size=1, max_size=20, unique=True),
       st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60)))
def test_serve_batch_keeps_the_batch_size_and_serves_good_ids_only(ids, bad, known):
    """Invariants of the function N = 0 and every worker run: the batch keeps its length; a
    good id is served as itself; a bad slot holds the next good image of the batch in turn, and
    its id; only unknown ids are read, each once; what fails is recorded; repeats = bad slots."""
    ids = np.asarray(ids, np.int64)
    load = StubLoader(bad)
    known_bad = {i: "known" for i in known}
    good = [i for i in ids.tolist() if i not in bad and i not in known]
    if not good:
        with pytest.raises(DataError, match="no image of a batch"):
            serve_batch(ids, load, known_bad, "stub")
        return
    out = serve_batch(ids, load, known_bad, "stub")
    assert out.served.shape == ids.shape and out.pixels.shape == (len(ids), 1, 1, 1)
    np.testing.assert_array_equal(out.pixels[:, 0, 0, 0], out.served)  # image k is id k's
    slots = [k for k, i in enumerate(ids.tolist()) if i in bad or i in known]
    assert out.served[slots].tolist() == [good[j % len(good)] for j in range(len(slots))]
    keep = [k for k in range(len(ids)) if k not in slots]
    np.testing.assert_array_equal(out.served[keep], ids[keep])
    assert load.calls == [i for i in ids.tolist() if i not in known]
    assert set(out.new_skipped) == {i for i in ids.tolist() if i in bad and i not in known}
    assert out.repeats == len(slots)


@pytest.fixture
def no_hang():
    """Fail (not hang) a test whose pool would wait forever."""
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("timed out: a hang"))
    signal.alarm(180)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_two_workers_serve_what_the_trainer_process_serves_and_never_read_a_pruned_sample(
        tmp_path, no_hang):
    path = write_csv(tmp_path, 40, corrupt={3, 17}, missing={8})
    rng = np.random.default_rng(0)
    # epoch 0 visits ids 0..29 (30..39 pruned); epoch 1 a shuffled subset again holding 17
    first, second = rng.permutation(30), rng.permutation(np.r_[0:20, 25:30])
    epochs = [np.array_split(first, 5), np.array_split(second, 4)]
    runs = {}
    for workers in (0, 2):
        log = tmp_path / f"reads-{workers}.txt"
        data = corpus(path, LoggingReader(corpus(path).loader.read.paths, log))
        batches = run_epochs(data, workers, epochs)
        reads = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
        if workers:  # a spawned worker imports neither JAX nor torch
            assert {frameworks for _, _, frameworks in reads} == {0}
        reads = [(pid, i) for pid, i, _ in reads]
        runs[workers] = (batches, reasons(data.skipped), data.repeats, reads)
    (b0, skipped0, repeats0, reads0), (b2, skipped2, repeats2, reads2) = runs[0], runs[2]
    assert len(b0) == len(b2) == 9
    for (served0, pixels0), (served2, pixels2) in zip(b0, b2):
        np.testing.assert_array_equal(served2, served0)
        np.testing.assert_array_equal(pixels2, pixels0)
        assert pixels2.dtype == np.uint8 and pixels2.shape == (len(served2), 1, 28, 28)
    # found in a worker, recorded here as N = 0 records them (same reasons, same order)
    assert skipped2 == skipped0 and {i for i, _ in skipped2} == {3, 8, 17}
    assert dict(skipped2)[17].startswith("decode:")
    assert repeats2 == repeats0 == 3 + 3  # 3, 8 and 17 in each epoch
    # the reads happened in the workers, each sample read once per visit at most, a pruned
    # (30..39), a missing (8) or an already known bad (3, 17 in epoch 1) sample never
    assert {pid for pid, _ in reads2} and os.getpid() not in {pid for pid, _ in reads2}
    assert len({pid for pid, _ in reads2}) <= 2
    for reads in (reads0, reads2):
        ids = sorted(i for _, i in reads)
        expected = sorted([i for i in first.tolist() if i != 8]
                          + [i for i in second.tolist() if i not in (3, 8, 17)])
        assert ids == expected


def test_a_shard_corpus_in_two_workers_serves_what_the_trainer_process_serves(tmp_path):
    from reference_trainers.common.corpora.shards import ShardIndex

    shards = write_shards(tmp_path / "shards", 24, 10, corrupt={12})
    index = ShardIndex.open(str(shards), index_path=tmp_path / "index.npz")
    results = {}
    for workers in (0, 2):
        data = CorpusArrays.from_shards(index, spec=ImageSpec.cpu(),
                                        tokenizer=Tokenizer(context_length=8))
        batches = run_epochs(data, workers, [np.array_split(np.arange(24)[::-1], 3)])
        results[workers] = (batches, data.skipped, data.repeats)
    for (s0, p0), (s2, p2) in zip(results[0][0], results[2][0]):
        np.testing.assert_array_equal(s2, s0)
        np.testing.assert_array_equal(p2, p0)
    assert reasons(results[2][1]) == reasons(results[0][1]) and list(results[2][1]) == [12]
    assert results[2][2] == results[0][2] == 1


def test_a_worker_that_raises_is_a_data_error_naming_the_sample(tmp_path, no_hang):
    path = write_csv(tmp_path, 12)
    data = corpus(path, FailingReader(corpus(path).loader.read.paths, bad=5))
    with pytest.raises(DataError, match=r"failed decoding sample .*5\.png.*RuntimeError: the "
                                        r"reader broke"):
        run_epochs(data, 2, [np.array_split(np.arange(12), 3)])


def test_a_worker_that_dies_is_a_data_error_naming_the_sample_not_a_hang(tmp_path, no_hang):
    path = write_csv(tmp_path, 12)
    data = corpus(path, DyingReader(corpus(path).loader.read.paths, bad=5))
    with pytest.raises(DataError, match=r"--workers process .* died .*5\.png.*--workers 0"):
        run_epochs(data, 2, [np.array_split(np.arange(12), 3)])


def test_serving_another_batch_than_the_epoch_next_is_refused(tmp_path):
    data = corpus(write_csv(tmp_path, 8))
    with BatchDecoder(data, 1) as decoder:
        decoder.start_epoch([np.arange(4), np.arange(4, 8)])
        with pytest.raises(TrainerError, match="not the epoch's next batch"):
            decoder.serve(np.arange(4, 8))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_a_bad_worker_count_is_refused_naming_it(bad):
    with pytest.raises(TrainerError, match=r"--workers .*integer >= 0"):
        check_worker_count(bad)


# ------------------------------------------------------------------------- the trainer
ARGS = ["--framework", "jax", "--preset", "cpu-tiny", "--num-test", "100", "--batch-size", "16",
        "--epochs", "3", "--scan-warmup-epochs", "1", "--eval-every", "0", "--threads", "1",
        "--quiet"]
TIMING = ("seconds", "samples_per_s", "time")  # row keys that measure the clock


def rows_without_timing(out: pathlib.Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in rows]


def summary_without_timing(out: pathlib.Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {k: v for k, v in summary.items() if not any(t in k for t in TIMING)}


def test_a_jax_csv_run_with_two_workers_equals_the_run_without_and_resumes_exactly(
        tmp_path, capsys):
    """fails on main: 'not supported with --framework jax: --workers 2 (the JAX trainers hold
    Fashion-MNIST in memory)'."""
    pytest.importorskip("jax")
    from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR
    from reference_trainers.jax import clip as jax_clip

    if not pathlib.Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip("the run evaluates zero-shot on Fashion-MNIST")
    data = ["--data", f"csv:{write_csv(tmp_path, 64, corrupt={7, 40}, missing={21})}"]
    assert jax_clip.main(ARGS + data + ["--workers", "0", "--out", str(tmp_path / "w0")]) == 0
    # open_clip's spelling of the run directory, as the torch trainer takes it
    assert jax_clip.main(ARGS + data + ["--workers", "2", "--logs", str(tmp_path), "--name",
                                        "w2"]) == 0
    assert "--workers 2: " in capsys.readouterr().out  # the line saying who decodes
    stopped = str(tmp_path / "stopped")
    two = data + ["--workers", "2", "--out", stopped]
    assert jax_clip.main(ARGS + two + ["--stop-after", "1"]) == 0
    assert jax_clip.main(ARGS + two + ["--resume"]) == 0
    w0, w2, resumed = (rows_without_timing(tmp_path / n) for n in ("w0", "w2", "stopped"))
    assert [r["epoch"] for r in w0] == [0, 1, 2] and w0[-1]["num_kept"] < 64  # pruned
    assert w0[-1]["skipped_samples"] == 3 and w0[0]["repeated_samples"] == 3
    assert w2 == w0
    # a resumed process starts its repeat count afresh; everything else continues exactly
    assert [{k: v for k, v in r.items() if k != "repeated_samples"} for r in resumed] == \
        [{k: v for k, v in r.items() if k != "repeated_samples"} for r in w0]
    assert summary_without_timing(tmp_path / "w2") == summary_without_timing(tmp_path / "w0")
    assert 0.0 <= summary_without_timing(tmp_path / "w2")["zero_shot_top1"] <= 1.0
    # the pruner's plans and records: its store log and the coreset, bit for bit
    for name in ("w2", "stopped"):
        assert store_log(tmp_path / name) == store_log(tmp_path / "w0")
        np.testing.assert_array_equal(np.load(tmp_path / name / "coreset.npy"),
                                      np.load(tmp_path / "w0" / "coreset.npy"))


def test_a_jax_shard_run_with_two_workers_equals_the_run_without(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("braceexpand")
    from reference_trainers.jax import clip as jax_clip

    shards = write_shards(tmp_path / "shards", 48, 24, corrupt={30})
    (tmp_path / "no-fmnist").mkdir()
    data = ["--train-data", f"{shards}/{{00000..00001}}.tar", "--data-dir",
            str(tmp_path / "no-fmnist"), "--val-data", str(write_csv(tmp_path, 12))]
    for name, workers in (("w0", "0"), ("w2", "2")):
        assert jax_clip.main(ARGS + data + ["--workers", workers, "--epochs", "2",
                                            "--out", str(tmp_path / name)]) == 0
    w0, w2 = (rows_without_timing(tmp_path / n) for n in ("w0", "w2"))
    assert len(w0) == 2 and w0[-1]["skipped_samples"] == 1 and w2 == w0
    assert store_log(tmp_path / "w2") == store_log(tmp_path / "w0")
    assert 0.0 <= w2[-1]["image_to_text_R@1"] <= w2[-1]["image_to_text_R@10"] <= 1.0


def test_workers_on_fashion_mnist_do_nothing_and_say_so(tmp_path, capsys):
    pytest.importorskip("jax")
    from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR
    from reference_trainers.jax import clip as jax_clip

    if not pathlib.Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip("Fashion-MNIST not installed")
    args = ARGS + ["--num-train", "64", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert jax_clip.main(args + ["--workers", "2"]) == 0
    assert "--workers 2: Fashion-MNIST is held in memory, nothing to decode" in \
        capsys.readouterr().out
    assert jax_clip.main(args[:-1] + [str(tmp_path / "bad"), "--workers", "-2"]) == 2
    assert "--workers -2" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


@pytest.mark.slow  # two JAX processes with two decode workers each, and one process: 90 s here
@pytest.mark.distributed
def test_two_jax_processes_with_two_workers_each_train_the_global_batch_of_one(tmp_path):
    """Each process's pool decodes that process's share of the plan: two processes with a batch
    of 16 and --workers 2 run the warm-up and preparation a one-process run with a batch of
    32 and no workers runs (the same plans, steps and losses to float summation order)."""
    pytest.importorskip("jax")
    from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR
    from reference_trainers.jax import clip as jax_clip
    from tests.jax_trainers.test_jax_processes import _ok, launch

    if not pathlib.Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip("the run evaluates zero-shot on Fashion-MNIST")
    args = ARGS[:-1] + ["--data", f"csv:{write_csv(tmp_path, 96)}", "--epochs", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert jax_clip.main(args + ["--quiet", "--batch-size", "32", "--out", str(one)]) == 0
    logs = _ok(launch("clip", args + ["--workers", "2", "--out", str(two)]))
    assert "decoded in 2 worker processes" in logs[0]
    rows_one, rows_two = rows_without_timing(one), rows_without_timing(two)
    assert [r["phase"] for r in rows_two] == [r["phase"] for r in rows_one] == ["warmup",
                                                                              "prepare"]
    for a, b in zip(rows_one, rows_two):
        assert (b["num_kept"], b["steps"], b["samples"], b["world_size"]) == \
            (a["num_kept"], a["steps"], a["samples"], 2)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["mean_loss"] == pytest.approx(a["mean_loss"], rel=1e-4)
