"""Real corpora: CSV rows and tar shards built here from Fashion-MNIST images, with bad rows,
corrupt images, pruning before decode and the split over ranks and workers."""

from __future__ import annotations

import functools
import io
import json
import pathlib
import tarfile

import numpy as np
import pytest
import torch

pytest.importorskip("PIL", reason="the corpus readers decode with Pillow (pip install pillow)")
from PIL import Image  # noqa: E402

from reference_trainers.common.captions import make_captions  # noqa: E402
from reference_trainers.common.corpora import (CsvCorpus, ImageSpec, ShardIndex,  # noqa: E402
                                               ShardStream, shards)
from reference_trainers.common.corpora import make_shards  # noqa: E402
from reference_trainers.common.data import (DEFAULT_FASHION_MNIST_DIR,  # noqa: E402
                                            read_idx)
from reference_trainers.common.errors import DataError  # noqa: E402
from reference_trainers.common.tokenizer import Tokenizer  # noqa: E402
from scan_core import EpochPlan, bitset  # noqa: E402

IMAGES_FILE = pathlib.Path(DEFAULT_FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")
LABELS_FILE = pathlib.Path(DEFAULT_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")
pytestmark = pytest.mark.skipif(not IMAGES_FILE.is_file(),
                                reason=f"Fashion-MNIST is not installed in "
                                       f"{DEFAULT_FASHION_MNIST_DIR}")
TOKENIZE = functools.partial(Tokenizer().encode, context_length=12)
N = 40


@pytest.fixture(scope="module")
def fmnist():
    images = read_idx(IMAGES_FILE)[:N]
    captions = make_captions(images, read_idx(LABELS_FILE)[:N].astype(np.int64), seed=0).texts
    return images, list(captions)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def plan_dropping(n: int, dropped, epoch: int = 3) -> EpochPlan:
    dropped = np.asarray(sorted(dropped), dtype=np.int64)
    bits = bitset.from_ids(dropped, n) if len(dropped) else None
    return EpochPlan(epoch, "mutate", 0.5, n, len(dropped), n - len(dropped), seed=0,
                     drop_bits=bits)


# ------------------------------------------------------------------------------------ CSV
@pytest.fixture
def csv_corpus(tmp_path, fmnist):
    images, captions = fmnist
    (tmp_path / "img").mkdir()
    rows = ["path\tcaption"]
    for i in range(12):
        name = f"img/{i}.png"
        if i != 4:  # row 4 names a file that is not there
            (tmp_path / name).write_bytes(b"not an image at all" if i == 7 else png(images[i]))
        rows.append(f"{name}\t{'' if i == 2 else captions[i]}")  # row 2: no caption
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    return CsvCorpus(tmp_path / "pairs.tsv", spec=ImageSpec.cpu(), tokenizer=TOKENIZE,
                     image_column="path")


def test_csv_bad_rows_keep_their_ids_and_are_reported_at_load(csv_corpus):
    assert len(csv_corpus) == 12
    assert csv_corpus.skipped == {2: "empty caption", 4: "missing file img/4.png"}
    assert 2 not in csv_corpus.good_ids and 7 in csv_corpus.good_ids  # 7 is found at decode


def test_csv_batch_serves_only_decodable_rows_with_their_row_ids(csv_corpus, fmnist):
    images, tokens, ids = csv_corpus.batch(np.arange(12), augment=False)
    assert ids.tolist() == [0, 1, 3, 5, 6, 8, 9, 10, 11]
    assert images.shape == (9, 1, 28, 28) and images.dtype == torch.float32
    assert tokens.shape == (9, 12) and tokens.dtype == torch.int64
    assert "decode" in csv_corpus.skipped[7] and len(csv_corpus.skipped) == 3
    expected = ImageSpec.cpu().prepare(torch.from_numpy(fmnist[0][[5]])[:, None], augment=False,
                                       generator=None)
    assert torch.allclose(images[3], expected[0])
    assert tokens[3].tolist() == TOKENIZE([fmnist[1][5]])[0].tolist()
    # The next epoch serves the same ids the same way (7 is now known bad).
    assert csv_corpus.batch(np.arange(12), augment=False)[2].tolist() == ids.tolist()


def test_csv_fill_bad_keeps_the_batch_size_with_counted_repeats(csv_corpus):
    gen = torch.Generator().manual_seed(0)
    images, tokens, ids = csv_corpus.batch(np.array([0, 2, 4, 7, 1]), augment=True,
                                           generator=gen, fill_bad=True)
    assert ids.tolist() == [0, 1, 0, 1, 0] and len(images) == len(tokens) == 5
    assert csv_corpus.repeats == 3
    empty = csv_corpus.batch(np.array([2, 4]), augment=True, generator=gen, fill_bad=True)
    assert [len(t) for t in empty] == [0, 0, 0] and empty[1].shape == (0, 12)


def test_csv_errors_name_the_fix(tmp_path, csv_corpus):
    (tmp_path / "x.csv").write_text("file,text\na.png,b\n")
    with pytest.raises(DataError, match="image_column="):
        CsvCorpus(tmp_path / "x.csv", spec=ImageSpec.cpu(), tokenizer=TOKENIZE)
    with pytest.raises(DataError, match="ids span"):
        csv_corpus.batch(np.array([12]), augment=False)


def test_rgb_spec_resizes_and_centre_crops():
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, 20:40] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    out = shards.decode_image(buffer.getvalue(), ImageSpec.gpu(16))
    assert out.shape == (3, 16, 16) and out[:, :, 8].min() == 255 and out[:, :, 0].max() == 0


# --------------------------------------------------------------------------------- shards
def write_tar(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shard_dir(tmp_path, fmnist):
    """4 shards of 8 samples (ids 0..31); id 5 has a corrupt image, id 9 has no .txt."""
    images, captions = fmnist
    for s in range(4):
        members = []
        for j in range(8):
            i = 8 * s + j
            members.append((f"k{i:03d}.png", b"\x89PNG broken" if i == 5 else png(images[i])))
            if i != 9:
                members.append((f"k{i:03d}.txt", captions[i].encode()))
        write_tar(tmp_path / f"part-{s}.tar", members)
    return tmp_path


def stream_for(index, rank=0, world=1, workers=0, **kw):
    return ShardStream(index, tokenizer=TOKENIZE, spec=ImageSpec.cpu(), rank=rank,
                       world_size=world, num_workers=workers, **kw)


def test_index_is_dense_stable_and_reused(shard_dir):
    index = ShardIndex.open(shard_dir)
    assert len(index) == 32 and index.keys.tolist() == [f"k{i:03d}" for i in range(32)]
    assert index.skipped == {9: "no .txt member"}
    assert index.shard_starts.tolist() == [0, 8, 16, 24, 32]
    stored = (shard_dir / shards.INDEX_NAME).stat().st_mtime_ns
    again = ShardIndex.open(shard_dir)
    assert (shard_dir / shards.INDEX_NAME).stat().st_mtime_ns == stored
    assert again.keys.tolist() == index.keys.tolist() and again.id_of("k017") == 17
    write_tar(shard_dir / "part-9.tar", [("z.png", b"x"), ("z.txt", b"y")])
    with pytest.raises(DataError, match="rebuild=True"):
        ShardIndex.open(shard_dir)
    assert len(ShardIndex.open(shard_dir, rebuild=True)) == 33


def test_duplicate_keys_across_shards_name_both(shard_dir):
    write_tar(shard_dir / "part-x.tar", [("k003.png", b"x"), ("k003.txt", b"y")])
    with pytest.raises(DataError, match=r"k003.*part-0\.tar.*part-x\.tar"):
        ShardIndex.build(shard_dir)


def test_pruned_samples_are_never_decoded_and_bad_ones_skipped_with_a_count(shard_dir,
                                                                           monkeypatch):
    index = ShardIndex.open(shard_dir)
    decoded = []
    real = shards.decode_image
    monkeypatch.setattr(shards, "decode_image",
                        lambda data, spec: decoded.append(data) or real(data, spec))
    dropped = set(range(0, 32, 3))
    plan = plan_dropping(32, dropped)
    stream = stream_for(index, shuffle_buffer=0)
    served = [sample_id for _, _, sample_id in stream.iter_worker(plan)]
    kept_good = sorted(set(range(32)) - dropped - {9})
    assert 5 in kept_good and 5 not in served
    assert sorted(set(served)) == sorted(set(kept_good) - {5})
    assert len(served) == len(kept_good)  # one stream: the corrupt sample is topped up once
    assert stream.stats.repeats == 1 and list(stream.stats.corrupt) == [5]
    assert len(decoded) == len(kept_good) + 1  # kept ones, plus the top-up; pruned: never
    assert not dropped & set(served)


def test_two_ranks_two_workers_serve_every_kept_id_exactly_once(shard_dir):
    index = ShardIndex.open(shard_dir)
    for epoch, dropped in enumerate([set(), {1, 2, 3, 20, 21, 30}, set(range(0, 32, 2))]):
        plan = plan_dropping(32, dropped, epoch)
        seen, per_rank = [], []
        for rank in range(2):
            stream = stream_for(index, rank, 2, 2, seed=7)
            rank_ids = [i for w in range(2) for _, _, i in stream(plan, w, 2)]
            per_rank.append(len(rank_ids))
            seen += rank_ids
            assert stream.steps_per_rank(plan, 3) == 2 * -(-stream.samples_per_worker(plan) // 3)
        good_kept = set(plan.kept_ids.tolist()) - {9}
        unique = set(seen)
        assert unique == good_kept - {5} and not dropped & unique
        assert per_rank[0] == per_rank[1] == 2 * stream.samples_per_worker(plan)
        extra = len(seen) - len(unique)
        assert extra == stream.topup_count(plan) + (5 in good_kept)
        # Served once each, bar the counted top-ups: the plan's kept set less the bad samples.
        assert len(unique) == plan.num_kept - len({5, 9} & set(plan.kept_ids.tolist()))


def test_shuffle_is_deterministic_per_epoch(shard_dir):
    index = ShardIndex.open(shard_dir)
    plan = plan_dropping(32, [], epoch=0)
    order = lambda p: [i for _, _, i in stream_for(index, seed=1, shuffle_buffer=4).iter_worker(p)]
    assert order(plan) == order(plan)
    assert order(plan) != order(plan_dropping(32, [], epoch=1))


# ---------------------------------------------------------------------------- make_shards
def test_make_shards_round_trip_csv_to_stream(csv_corpus, tmp_path, capsys):
    out = tmp_path / "shards"
    code = make_shards.main(["--from-csv", str(tmp_path / "pairs.tsv"), "--image-column", "path",
                             "--out", str(out), "--samples-per-shard", "4"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["samples"] == 10 and report["shards"] == 3
    assert report["skipped"] == {"000000002": "empty caption",
                                 "000000004": "missing file img/4.png"}
    index = ShardIndex.open(out)
    assert index.keys[:3].tolist() == ["000000000", "000000001", "000000003"]
    got = {int(index.keys[i]): (img, tok) for img, tok, i in
           stream_for(index, shuffle_buffer=0).iter_worker(plan_dropping(10, []))}
    images, tokens, rows = csv_corpus.batch(np.arange(12), augment=False)
    assert sorted(got) == rows.tolist()
    for image, token, row in zip(images, tokens, rows.tolist()):
        pixels = ImageSpec.cpu().prepare(torch.from_numpy(got[row][0])[None], augment=False,
                                         generator=None)[0]
        assert torch.equal(pixels, image) and got[row][1].tolist() == token.tolist()


def test_make_shards_from_folder_and_fashion_mnist(tmp_path, fmnist, capsys):
    folder = tmp_path / "photos" / "tops"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"a.{i}.png").write_bytes(png(fmnist[0][i]))
        if i:
            (folder / f"a.{i}.txt").write_text(fmnist[1][i])
    assert make_shards.main(["--from-folder", str(tmp_path / "photos"), "--out",
                             str(tmp_path / "s1")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 2 and report["skipped"] == {"tops/a_0": "no caption file"}
    assert make_shards.main(["--from-fashion-mnist", "--num-samples", "30", "--out",
                             str(tmp_path / "s2"), "--samples-per-shard", "16"]) == 0
    index = ShardIndex.open(tmp_path / "s2")
    assert len(index) == 30 and len(index.shard_names) == 2 and not index.skipped
    assert make_shards.main(["--from-fashion-mnist", "--out", str(tmp_path / "s2")]) == 2


# ------------------------------------------------------------------------ torch DataLoader
def test_a_dataloader_with_two_workers_serves_the_plan(shard_dir):
    from adapters.torch.stream import PlanIterableDataset, collate_samples

    index = ShardIndex.open(shard_dir)
    plan = plan_dropping(32, {0, 1, 2, 3, 4})
    stream = stream_for(index, workers=2, seed=3)
    dataset = PlanIterableDataset(stream, num_workers=2)
    dataset.set_plan(plan)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2,
                                         collate_fn=collate_samples)
    batches = list(loader)
    assert len(batches) == stream.steps_per_rank(plan, 4)
    ids = torch.cat([b[2] for b in batches]).tolist()
    assert set(ids) == set(range(5, 32)) - {5, 9}
    assert all(b[0].dtype == torch.uint8 and b[0].shape[1:] == (1, 28, 28) for b in batches)
    x = ImageSpec.cpu().prepare(batches[0][0], augment=True,
                                generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == batches[0][0].shape


def test_without_pillow_decoding_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match="pip install pillow"):
        shards.decode_image(b"", ImageSpec.cpu())
