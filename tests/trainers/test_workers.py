"""`--workers N` (reference_trainers/common/workers.py): corpora decoded in DataLoader workers
give the batches of N = 0, count what the workers skip, and keep resume exact."""

import io
import json
import pathlib
import tarfile

import numpy as np
import pytest
import torch

from reference_trainers.common.corpora import CsvCorpus, ImageSpec, ShardIndex, ShardStream
from reference_trainers.common.errors import TrainerError
from reference_trainers.common.tokenizer import Tokenizer
from reference_trainers.common.corpora.decode_pool import check_worker_count
from reference_trainers.common.workers import (corpus_batches, raw_stream_batches,
                                               stream_batches)
from scan_core import EpochPlan

pytest.importorskip("PIL")
CAPTIONS = ("a photo of a bag.", "a shirt.", "a black sneaker.", "trousers on a chair.")


def tokenize(texts):
    return Tokenizer().encode(texts, context_length=8)


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def write_csv_corpus(folder: pathlib.Path, n: int, *, corrupt=(), missing=()) -> pathlib.Path:
    """n random 28x28 PNGs with captions; ids in `corrupt` are not PNGs (found at decode),
    ids in `missing` name no file (found at load)."""
    rows = ["image,caption"]
    for i, pixels in enumerate(images(n)):
        if i in corrupt:
            (folder / f"{i}.png").write_bytes(b"not a png")
        elif i not in missing:
            (folder / f"{i}.png").write_bytes(png(pixels))
        rows.append(f"{i}.png,{CAPTIONS[i % len(CAPTIONS)]}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def csv_corpus(path):
    return CsvCorpus(path, spec=ImageSpec.cpu(), tokenizer=tokenize)


@pytest.mark.parametrize("workers", [0, 2])
def test_corpus_batches_equal_the_corpus_own_batches_and_record_decode_failures(tmp_path,
                                                                               workers):
    path = write_csv_corpus(tmp_path, 40, corrupt={3, 17}, missing={8})
    id_batches = [np.arange(k, min(k + 7, 40)) for k in range(0, 40, 7)][::-1]
    expected_corpus = csv_corpus(path)
    generator = torch.Generator().manual_seed(5)
    expected = [expected_corpus.batch(ids, augment=True, generator=generator)
                for ids in id_batches]
    corpus = csv_corpus(path)
    got = list(corpus_batches(corpus, id_batches, workers=workers,
                              generator=torch.Generator().manual_seed(5)))
    assert len(got) == len(expected)
    for (x, t, i), (ex, et, ei) in zip(got, expected):
        assert torch.equal(i, ei) and torch.equal(t, et) and torch.equal(x, ex)
    assert 3 not in torch.cat([b[2] for b in got]).tolist()
    # found in a worker at decode, recorded in this process's corpus as N = 0 records them
    assert set(corpus.skipped) == set(expected_corpus.skipped) == {3, 8, 17}
    assert corpus.skipped[17].startswith("decode:")


def write_shards(folder: pathlib.Path, n: int, per_shard: int, corrupt=()) -> pathlib.Path:
    folder.mkdir()
    pixels = images(n, seed=1)
    for s in range(0, n, per_shard):
        with tarfile.open(folder / f"{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(s + per_shard, n)):
                for name, data in ((f"{i:09d}.png", b"\x89PNG x" if i in corrupt
                                    else png(pixels[i])),
                                   (f"{i:09d}.txt", CAPTIONS[i % 4].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def test_stream_batches_in_two_workers_serve_every_kept_id_and_count_corrupt_ones(tmp_path):
    index = ShardIndex.open(write_shards(tmp_path / "shards", 48, 12, corrupt={13, 30}))
    plan = EpochPlan(2, "warmup", 0.0, 48, 0, 48, seed=0)
    runs = {}
    for workers in (0, 2, 2):
        stream = ShardStream(index, tokenizer=tokenize, spec=ImageSpec.cpu(),
                             num_workers=workers, seed=4)
        batches = list(stream_batches(stream, plan, batch_size=5, workers=workers,
                                      generator=torch.Generator().manual_seed(0)))
        assert len(batches) == stream.steps_per_rank(plan, 5)
        ids = torch.cat([b[2] for b in batches]).tolist()
        assert set(ids) == set(range(48)) - {13, 30}
        assert set(stream.stats.corrupt) == {13, 30}  # met in a worker, counted here
        # the refills standing in for the corrupt ones are counted as repeats
        assert len(ids) - len(set(ids)) == stream.repeated_samples(plan) > 0
        runs.setdefault(workers, []).append((ids, torch.cat([b[0] for b in batches])))
    (ids_a, x_a), (ids_b, x_b) = runs[2]
    assert ids_a == ids_b and torch.equal(x_a, x_b)  # deterministic per (seed, workers)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_a_bad_worker_count_is_refused_naming_it(bad):
    with pytest.raises(TrainerError, match=r"--workers .*integer >= 0"):
        check_worker_count(bad)


# ------------------------------------------------------------------------- the trainer
ARGS = ["--preset", "cpu-tiny", "--num-test", "100", "--batch-size", "16", "--epochs", "3",
        "--scan-warmup-epochs", "1", "--eval-every", "0", "--threads", "1", "--quiet"]


def _rows(out):
    return [json.loads(x) for x in (pathlib.Path(out) / "metrics.jsonl").read_text().splitlines()]


def _fmnist_or_skip():
    from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR

    if not pathlib.Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip("the CLIP trainer evaluates on Fashion-MNIST")


def test_a_csv_run_with_two_workers_equals_the_run_without_and_resumes_exactly(tmp_path):
    _fmnist_or_skip()
    from reference_trainers.clip import train as clip_train

    data = ["--data", f"csv:{write_csv_corpus(tmp_path, 96, corrupt={7})}"]
    runs = {}
    for name, extra in (("w0", ["--workers", "0"]), ("w2", ["--workers", "2"])):
        assert clip_train.main(ARGS + data + extra + ["--out", str(tmp_path / name)]) == 0
        runs[name] = _rows(tmp_path / name)
    stopped = str(tmp_path / "stopped")
    assert clip_train.main(ARGS + data + ["--workers", "2", "--stop-after", "1",
                                          "--out", stopped]) == 0
    assert clip_train.main(ARGS + data + ["--workers", "2", "--resume", "--out", stopped]) == 0
    runs["resumed"] = _rows(stopped)
    keys = ("train_loss", "samples", "steps", "num_kept", "zero_shot_top1", "skipped_samples")
    table = {name: [tuple(r.get(k) for k in keys) for r in rows] for name, rows in runs.items()}
    assert len(table["w0"]) == 3 and table["w0"][-1][-1] == 1
    assert table["w2"] == table["w0"]
    assert table["resumed"] == table["w0"]


def test_the_trainer_refuses_a_negative_worker_count(tmp_path, capsys):
    _fmnist_or_skip()
    from reference_trainers.clip import train as clip_train

    assert clip_train.main(ARGS + ["--workers", "-2", "--out", str(tmp_path)]) == 2
    assert "--workers -2" in capsys.readouterr().err


def test_moco_on_a_folder_with_two_workers_equals_the_run_without(tmp_path):
    _fmnist_or_skip()
    from reference_trainers.moco import train as moco_train

    pixels = images(48, seed=3)
    for i, image in enumerate(pixels):
        folder = tmp_path / "tree" / ("bag", "coat", "shirt")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(b"broken" if i == 4 else png(image))
    args = ["--preset", "cpu-tiny-moco", "--num-train", "64", "--num-test", "32",
            "--batch-size", "16", "--epochs", "2", "--scan-warmup-epochs", "1", "--threads", "1",
            "--quiet", "--eval-every", "0", "--data", f"folder:{tmp_path / 'tree'}"]
    for name, workers in (("w0", "0"), ("w2", "2")):
        assert moco_train.main(args + ["--workers", workers, "--out", str(tmp_path / name)]) == 0
    keys = ("train_loss", "samples", "steps", "num_kept", "skipped_samples", "knn_top1")
    w0, w2 = ([tuple(r.get(k) for k in keys) for r in _rows(tmp_path / name)]
              for name in ("w0", "w2"))
    assert len(w0) == 2 and w0[-1][4] == 1 and w2 == w0


@pytest.mark.parametrize("n, batch_size, workers", [
    (10, 4, 2), (2, 4, 2), (16, 4, 2), (9, 4, 0), (1, 4, 0), (13, 4, 2), (3, 2, 2)])
def test_moco_counts_the_stream_batches_it_serves_after_folding_lone_samples(
        tmp_path, n, batch_size, workers):
    """The LR and momentum schedules follow i / num_batches: the count must be the batches
    the folded stream really serves, for every worker count (fails on main for 2 workers
    with one sample left over per worker: each worker's lone batch folds in)."""
    from reference_trainers.moco.train import _fold_stream, _stream_steps

    index = ShardIndex.open(write_shards(tmp_path / "shards", n, 6))
    plan = EpochPlan(2, "warmup", 0.0, n, 0, n, seed=0)
    stream = ShardStream(index, tokenizer=None, spec=ImageSpec.cpu(), num_workers=workers,
                         seed=4, captions=False)
    raw = raw_stream_batches(stream, plan, batch_size=batch_size, workers=workers)
    batches = list(_fold_stream(raw))
    assert len(batches) == _stream_steps(stream, plan, batch_size)
    assert all(len(ids) >= 2 for _, ids in batches) or n == 1  # BatchNorm takes >= 2
    served = torch.cat([ids for _, ids in batches]).tolist()
    assert set(served) == set(range(n))


def test_moco_on_shards_with_two_workers_serves_the_kept_ids_and_resumes_exactly(tmp_path):
    _fmnist_or_skip()
    from reference_trainers.moco import train as moco_train

    shards = write_shards(tmp_path / "shards", 60, 16, corrupt={5, 40})
    args = ["--preset", "cpu-tiny-moco", "--num-train", "64", "--num-test", "32",
            "--batch-size", "8", "--epochs", "3", "--scan-warmup-epochs", "1", "--threads",
            "1", "--quiet", "--eval-every", "0", "--data", f"shards:{shards}",
            "--workers", "2"]
    assert moco_train.main(args + ["--out", str(tmp_path / "whole")]) == 0
    stopped = str(tmp_path / "stopped")
    assert moco_train.main(args + ["--stop-after", "1", "--out", stopped]) == 0
    assert moco_train.main(args + ["--resume", "--out", stopped]) == 0
    keys = ("train_loss", "samples", "steps", "num_kept", "skipped_samples", "lr")
    whole, resumed = ([tuple(r.get(k) for k in keys) for r in _rows(tmp_path / name)]
                      for name in ("whole", "stopped"))
    assert len(whole) == 3 and resumed == whole
    assert whole[-1][5] == 0.0  # the cosine LR ends at the last step: the batch count is right
    assert whole[-1][4] == 2  # both corrupt images, met in a worker, counted here
    for row in _rows(tmp_path / "whole"):  # every kept id served: repeats only top up
        assert row["samples"] >= row["num_kept"] - 2


class PidCorpus:
    """A map-style corpus stub whose pixels carry the decoding process's id."""

    captions = tokenizer = None

    def __init__(self):
        self.skipped, self.repeats = {}, 0

    def raw_batch(self, ids, fill_bad=False):
        import os

        ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        return torch.full((len(ids), 1, 1, 1), os.getpid(), dtype=torch.long), ids


def test_the_run_keeps_its_worker_processes_from_epoch_to_epoch():
    from reference_trainers.common.workers import DecodeWorkers

    decode, corpus, pids = DecodeWorkers(2), PidCorpus(), set()
    for epoch in range(3):
        id_batches = [np.arange(k, k + 4) + 100 * epoch for k in range(0, 16, 4)]
        got = list(decode.raw_corpus_batches(corpus, id_batches))
        assert [b[2].tolist() for b in got] == [b.tolist() for b in id_batches]
        pids |= {int(b[0][0]) for b in got}
    decode.close()
    assert len(pids) == 2


def test_persistent_stream_workers_serve_what_fresh_workers_serve_every_epoch(tmp_path):
    """Each epoch's plan reaches the kept workers: epoch by epoch the batches equal those of
    workers started for that epoch alone, corrupt ones counted once per epoch as before."""
    from reference_trainers.common.workers import DecodeWorkers
    from scan_core import bitset

    index = ShardIndex.open(write_shards(tmp_path / "shards", 48, 12, corrupt={13}))

    def stream():
        return ShardStream(index, tokenizer=tokenize, spec=ImageSpec.cpu(), num_workers=2,
                           seed=4)

    kept, fresh, decode = stream(), stream(), DecodeWorkers(2)
    for epoch, dropped in enumerate([[], [1, 2, 3, 20, 21, 40], list(range(0, 48, 3))]):
        drop = np.asarray(dropped, dtype=np.int64)
        plan = EpochPlan(epoch, "mutate" if dropped else "warmup", 0.5 if dropped else 0.0, 48,
                         len(drop), 48 - len(drop), seed=0,
                         drop_bits=bitset.from_ids(drop, 48) if dropped else None)
        a = list(decode.raw_stream_batches(kept, plan, batch_size=5))
        b = list(raw_stream_batches(fresh, plan, batch_size=5, workers=2))
        assert len(a) == len(b) == kept.steps_per_rank(plan, 5)
        for x, y in zip(a, b):
            assert all(torch.equal(u, v) for u, v in zip(x, y))
        assert set(torch.cat([x[2] for x in a]).tolist()) == set(plan.kept_ids.tolist()) - {13}
        assert set(kept.stats.corrupt) == set(fresh.stats.corrupt) == {13}
        assert kept.repeated_samples(plan) == fresh.repeated_samples(plan)
    decode.close()
