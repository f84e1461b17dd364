"""Unreadable data is said, listed and never a silent loss (issue 15, item 16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("PIL", reason="the corpus readers decode with Pillow (pip install pillow)")

from reference_trainers.common.corpora import CsvCorpus, ImageSpec, ShardIndex  # noqa: E402
from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR  # noqa: E402
from reference_trainers.common.errors import DataError  # noqa: E402
from reference_trainers.common.rundir import RunDir  # noqa: E402
from reference_trainers.common.skipped import SkippedLog, skipped_samples  # noqa: E402
from tests.trainers.test_corpora import (TOKENIZE, csv_corpus, fmnist, png,  # noqa: E402,F401
                                         shard_dir, write_tar)

needs_data = pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                                reason="Fashion-MNIST not installed")


def test_a_caption_longer_than_the_csv_modules_field_limit_loads(tmp_path):
    """Fails on main: _csv.Error: field larger than field limit (131072)."""
    (tmp_path / "a.png").write_bytes(b"x")
    caption = "a long caption " * 20_000                      # 300,000 characters
    (tmp_path / "pairs.csv").write_text(f"image,caption\na.png,{caption}\n")
    corpus = CsvCorpus(tmp_path / "pairs.csv", spec=ImageSpec.cpu(), tokenizer=TOKENIZE)
    assert len(corpus) == 1 and corpus.captions[0] == caption.strip()


@needs_data
@pytest.mark.parametrize("cut", ["inside a header", "inside an image", "before the end marker"])
def test_a_truncated_shard_is_refused_by_name(shard_dir, cut):
    """Fails on main for a cut in a header or before the end marker: tarfile stops silently
    there and the samples after the cut were lost with exit 0 and no word (a cut inside a
    member's data tarfile reports itself)."""
    path = shard_dir / "part-2.tar"
    data = path.read_bytes()
    index = ShardIndex.build(shard_dir)
    third = int(index.image_offset[16 + 3])                   # the 4th sample of part-2
    at = {"inside a header": third - 200, "inside an image": third + 20,
          "before the end marker": int(index.text_offset[23]) + 520}[cut]
    path.write_bytes(data[:at])
    with pytest.raises(DataError, match=r"shard .*part-2\.tar (is truncated: |as an "
                                        r"uncompressed tar: unexpected end of data).*[Rr]ewrite"):
        ShardIndex.build(shard_dir)


@needs_data
def test_skipped_samples_are_listed_with_path_or_key_and_reason(tmp_path, csv_corpus,
                                                                shard_dir):
    from reference_trainers.common.corpora import ShardStream

    csv_corpus.batch(list(range(12)), augment=False)         # decoding finds row 7 bad
    found = skipped_samples(csv_corpus)
    assert sorted(found) == [2, 4, 7]
    assert found[7][0].endswith("img/7.png") and found[7][1].startswith("decode")
    assert found[2][1] == "empty caption" and "missing file" in found[4][1]
    stream = ShardStream(ShardIndex.open(shard_dir), tokenizer=TOKENIZE, spec=ImageSpec.cpu())
    stream.stats.corrupt[5] = "cannot identify image file"
    assert skipped_samples(stream) == {5: ("k005", "cannot identify image file"),
                                       9: ("k009", "no .txt member")}

    run = RunDir(tmp_path / "run")
    log = SkippedLog(run, csv_corpus)
    line = log(0, samples_trained=9)
    assert line is not None and "3 samples skipped so far (3 new)" in line
    listed = [json.loads(x) for x in (run.path / "skipped.jsonl").read_text().splitlines()]
    assert [r["id"] for r in listed] == [2, 4, 7]
    assert listed[2]["source"].endswith("img/7.png") and listed[2]["reason"].startswith("decode")
    assert log(1, samples_trained=9) is None                  # nothing new: no line


@needs_data
def test_a_resumed_run_keeps_the_list_and_reports_only_what_is_new(tmp_path, csv_corpus):
    """After a resume the corpus is loaded afresh: it knows its load-time bad rows (2, 4) but
    not row 7, found at decode before the stop. Fails on main: the first epoch after the
    resume said '2 samples skipped so far (2 new)' and rewrote skipped.jsonl without row 7."""
    from reference_trainers.common.corpora import CsvCorpus

    run = RunDir(tmp_path / "run")
    csv_corpus.batch(list(range(12)), augment=False)         # decoding finds row 7 bad
    assert "(3 new)" in SkippedLog(run, csv_corpus)(0, samples_trained=9)
    fresh = CsvCorpus(csv_corpus.path, spec=ImageSpec.cpu(), tokenizer=TOKENIZE,
                      image_column="path")
    assert sorted(skipped_samples(fresh)) == [2, 4]
    resumed = SkippedLog(RunDir(run.path), fresh)
    assert resumed(1, samples_trained=9) is None              # nothing new
    listed = [json.loads(x)["id"] for x in (run.path / "skipped.jsonl").read_text().splitlines()]
    assert listed == [2, 4, 7]                                # row 7 is not lost
    fresh.batch(list(range(12)), augment=False)               # met again: still not new
    assert resumed(2, samples_trained=9) is None
    (tmp_path / "img" / "9.png").write_bytes(b"broken since")
    fresh.batch([9], augment=False)
    line = resumed(3, samples_trained=9)
    assert line is not None and "4 samples skipped so far (1 new)" in line


def test_a_garbled_skipped_list_is_refused_by_name(tmp_path):
    from reference_trainers.common.data_layer import HeldInMemory
    from reference_trainers.common.errors import RunDirError

    run = RunDir(tmp_path / "run")
    class InMemory(HeldInMemory):
        images = labels = None

    (run.path / "skipped.jsonl").write_text('{"id": 1, "source": "a", "reason": "b"}\n{"id": 2,')
    with pytest.raises(RunDirError, match=r"skipped\.jsonl.*line 2"):
        SkippedLog(run, InMemory())


def test_data_without_bad_samples_writes_no_list_and_no_line(tmp_path):
    """Fashion-MNIST in memory: no skipped.jsonl (the run directory is the same as before,
    and as the JAX trainers', which have no corpora)."""
    from reference_trainers.common.data_layer import HeldInMemory

    class InMemory(HeldInMemory):      # the TrainData answers of every in-memory split
        images = labels = None

    run = RunDir(tmp_path / "run")
    log = SkippedLog(run, InMemory())
    assert log(0, samples_trained=64) is None and log(1, samples_trained=64) is None
    assert not (run.path / "skipped.jsonl").exists()


@needs_data
def test_an_epoch_where_no_sample_could_be_read_says_so(tmp_path, csv_corpus):
    """Fails on main: 'ScanStateError: no losses were recorded in warmup epoch 0'."""
    run = RunDir(tmp_path / "run")
    with pytest.raises(DataError, match=r"epoch 0 trained on no sample: every sample .* "
                                        r"could not be read \(2 skipped.*skipped\.jsonl"):
        SkippedLog(run, csv_corpus)(0, samples_trained=0)
    assert (run.path / "skipped.jsonl").exists()


@needs_data
def test_a_corpus_whose_images_never_decode_ends_the_run_with_a_data_error(tmp_path, capsys):
    from reference_trainers.clip import train as clip_train
    from tests.trainers.test_clip_train import ARGS

    rows = ["image,caption"]
    for i in range(16):
        (tmp_path / f"{i}.png").write_bytes(b"not a png")
        rows.append(f"{i}.png,a photo of a thing")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    code = clip_train.main(ARGS + ["--epochs", "2", "--num-test", "20", "--data",
                                   f"csv:{tmp_path / 'pairs.csv'}", "--out",
                                   str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "DataError: epoch 0 trained on no sample" in err, err
    assert len((tmp_path / "run" / "skipped.jsonl").read_text().splitlines()) == 16


@needs_data
def test_refills_for_a_corrupt_shard_image_count_as_repeated_samples(tmp_path, capsys):
    """Fails on main: repeated_samples read 0 though every epoch served a repeat in place of
    the corrupt image (docs/corpora.md counts them), and the repeat's id was recorded twice
    (num_recorded 128 for 127 distinct ids). The image's bytes are overwritten inside
    the tar, which stays a valid tar."""
    from reference_trainers.clip import train as clip_train
    from reference_trainers.common.corpora import make_shards
    from tests.trainers.test_clip_train import ARGS

    shards = tmp_path / "shards"
    assert make_shards.main(["--from-fashion-mnist", "--num-samples", "128",
                             "--samples-per-shard", "64", "--out", str(shards)]) == 0
    index = ShardIndex.open(shards)
    bad = 70
    path = shards / index.shard_names[int(index.shard[bad])]
    data = bytearray(path.read_bytes())
    offset, size = int(index.image_offset[bad]), int(index.image_size[bad])
    data[offset:offset + size] = b"\0" * size
    path.write_bytes(bytes(data))
    out = tmp_path / "run"
    assert clip_train.main(ARGS + ["--epochs", "2", "--num-test", "50", "--data",
                                   f"shards:{shards}", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:                                   # nothing pruned in warm-up / preparation
        assert r["num_kept"] == 128 and r["samples"] == 128
        assert r["repeated_samples"] == 1 and r["skipped_samples"] == 1
        assert r["num_recorded"] == 127              # the refill's id once (common/record_once)
    listed = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(r["id"], r["source"]) for r in listed] == [(bad, str(index.keys[bad]))]
    assert "epoch 0: 1 samples skipped so far (1 new)" in capsys.readouterr().out


def test_a_corrupt_images_reason_is_the_same_text_on_every_decode():
    """Pillow names the BytesIO it read ("<_io.BytesIO object at 0x7f...>"): that address
    made the same bad sample's reason differ from run to run, and from a run to its resume,
    in skipped.jsonl. The reason says what failed, and only that."""
    from reference_trainers.common.corpora.images import CorruptImageError, decode_image

    reasons = set()
    for _ in range(3):
        with pytest.raises(CorruptImageError) as err:
            decode_image(b"not an image at all", ImageSpec.cpu())
        reasons.add(str(err.value))
    assert len(reasons) == 1, reasons
    (reason,) = reasons
    assert "0x" not in reason and reason.startswith("cannot decode image (19 bytes): ")
    assert "cannot identify image file" in reason
