"""The byte-level BPE tokenizer for real captions, its training command, the trainers'
--tokenizer choice, and a CLIP smoke run on a tiny CSV corpus with a trained BPE tokenizer."""

from __future__ import annotations

import json
import pathlib
import random
import sys
import types

import numpy as np
import pytest
from hypothesis import given, strategies as st

from reference_trainers.common.errors import DataError
from reference_trainers.common.tokenizer import Tokenizer
from reference_trainers.common.tokenizer_bpe import (NUM_SPECIAL, BpeTokenizer, normalise,
                                                     train_bpe)
from reference_trainers.common.tokenizer_choice import load_tokenizer

CAPTIONS = [
    "A red shirt on a hanger.", "a red dress, folded", "Two red shirts and a blue dress",
    "Ein rotes Hemd über dem Stuhl", "une robe rouge très chic", "赤いシャツと青いドレス",
    "фото красной рубашки", "قميص أحمر", "a  photo\tof   a 🐱 cat 🐱🐱", "café, naïve, coöperate",
    "ankle boots 42 and 7 sandals", "e\u0301 (e + combining acute) vs é",
] * 3


@pytest.fixture(scope="module")
def tok() -> BpeTokenizer:
    return train_bpe(CAPTIONS, vocab_size=400, context_length=64, lowercase=False)


# ------------------------------------------------------------------------------ encoding
def test_unicode_captions_round_trip(tok):
    for text in CAPTIONS:
        assert tok.decode(tok.encode([text], context_length=200)) == [" ".join(text.split())]
    lower = train_bpe(CAPTIONS, vocab_size=400)
    assert lower.decode(lower.encode(["Ein ROTES Hemd"])) == ["ein rotes hemd"]


@given(st.text(max_size=60))
def test_any_text_round_trips_after_normalisation(text):
    tok = _SHARED
    assert tok.decode(tok.encode([text], context_length=300))[0] == normalise(text,
                                                                             lowercase=False)


_SHARED = train_bpe(CAPTIONS, vocab_size=400, lowercase=False)


def test_sot_eot_padding_and_truncation(tok):
    ids = tok.ids("a red shirt")
    row = tok.encode(["a red shirt"], context_length=20)[0]
    assert row.dtype == np.int64 and row.shape == (20,)
    assert row[0] == tok.sot_id and row[len(ids) + 1] == tok.eot_id
    assert row[1:len(ids) + 1].tolist() == ids and not row[len(ids) + 2:].any()  # <pad> = 0
    assert tok.eot_id not in ids and tok.sot_id not in ids and min(ids) >= NUM_SPECIAL
    long = " ".join(["a red shirt"] * 40)
    row = tok.encode([long], context_length=8)[0]
    assert row[0] == tok.sot_id and row[-1] == tok.eot_id and len(row) == 8
    assert row[1:-1].tolist() == tok.ids(long)[:6]
    assert long.startswith(tok.decode(row[None])[0])
    assert tok.encode(["x"]).shape == (1, 64)  # the tokenizer's own context length
    cut = tok.encode(["赤いシャツ"], context_length=3)  # a multi-byte character cut in half
    assert tok.decode(cut)[0] in ("赤", "\ufffd")


def test_merges_make_tokens_and_the_vocabulary_stops_at_its_size():
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 8)))
             for _ in range(300)]
    texts = [" ".join(rng.choices(words, k=10)) for _ in range(400)]
    tok = train_bpe(texts, vocab_size=600)
    assert tok.vocab_size == 600
    encoded = tok.encode(texts[:50], context_length=200)
    assert encoded.max() < 600
    assert (encoded > 0).sum(axis=1).mean() < 0.5 * np.mean([len(t) for t in texts[:50]])
    # Pre-tokens "ab", " ab", "cd": only (a, b) occurs twice; min_frequency 2 stops there.
    few = train_bpe(["ab ab", "cd"], vocab_size=600)
    assert few.merges == [(NUM_SPECIAL + ord("a"), NUM_SPECIAL + ord("b"))]
    assert few.vocab_size == NUM_SPECIAL + 256 + 1
    assert len(train_bpe(["ab ab", "cd"], vocab_size=600, min_frequency=1).merges) == 3


def test_training_is_deterministic_and_ignores_caption_order(tok, tmp_path):
    shuffled = CAPTIONS[:]
    random.Random(1).shuffle(shuffled)
    again = train_bpe(shuffled, vocab_size=400, context_length=64, lowercase=False)
    assert again.merges == tok.merges
    tok.save(tmp_path / "tok.json")
    loaded = BpeTokenizer.load(tmp_path / "tok.json")
    assert loaded.merges == tok.merges and loaded.context_length == 64
    assert np.array_equal(loaded.encode(CAPTIONS), tok.encode(CAPTIONS))


def test_bad_input_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="vocab_size=100"):
        train_bpe(["a"], vocab_size=100)
    with pytest.raises(DataError, match="context_length=1"):
        train_bpe(["a"], vocab_size=300, context_length=1)
    tok = train_bpe(["a b"], vocab_size=300)
    with pytest.raises(DataError, match="list"):
        tok.encode("a b")
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="train_tokenizer"):
        BpeTokenizer.load(tmp_path / "x.json")
    with pytest.raises(DataError, match="corrupt"):
        BpeTokenizer([(900, 3)])


# ------------------------------------------------------------------------ the command
def _csv(tmp_path: pathlib.Path, n: int = 24, images: bool = False) -> pathlib.Path:
    rows = ["image,caption"]
    for i in range(n):
        caption = CAPTIONS[i % len(CAPTIONS)].replace(",", "")
        rows.append(f"{i}.png,{caption}")
    if images:
        from PIL import Image

        from reference_trainers.common.data import load_fashion_mnist

        pixels = load_fashion_mnist().train_images
        for i in range(n):
            Image.fromarray(pixels[i]).save(tmp_path / f"{i}.png")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.csv"


def test_train_tokenizer_from_csv_and_from_shards_agree(tmp_path, capsys):
    pytest.importorskip("PIL")
    from reference_trainers.common.corpora import make_shards, train_tokenizer

    path = _csv(tmp_path, images=True)
    assert train_tokenizer.main(["--from-csv", str(path), "--vocab-size", "320",
                                 "--context-length", "32", "--out", str(tmp_path / "a.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["captions"] == 24 and report["vocab_size"] <= 320
    assert make_shards.main(["--from-csv", str(path), "--out", str(tmp_path / "shards")]) == 0
    capsys.readouterr()
    assert train_tokenizer.main(["--from-shards", str(tmp_path / "shards"), "--vocab-size", "320",
                                 "--context-length", "32", "--out", str(tmp_path / "b.json")]) == 0
    a, b = (BpeTokenizer.load(tmp_path / name) for name in ("a.json", "b.json"))
    assert a.merges == b.merges and a.context_length == 32
    assert train_tokenizer.main(["--from-csv", str(path), "--caption-column", "text",
                                 "--out", str(tmp_path / "c.json")]) == 2
    assert "--caption-column" in capsys.readouterr().err


# ------------------------------------------------------------------ --tokenizer choice
def test_the_word_tokenizer_stays_the_default_with_the_same_ids():
    texts = ["a photo of a bag.", "a small dark ankle boot", "unknown words here"]
    word = load_tokenizer("word", context_length=24)
    assert np.array_equal(word.encode(texts), Tokenizer().encode(texts, 24))
    assert (word.vocab_size, word.eot_id, word.context_length) == (Tokenizer().vocab_size, 2, 24)


def test_open_clip_is_used_when_installed_and_named_when_not(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(DataError, match="pip install open_clip_torch"):
        load_tokenizer("open_clip")

    class FakeSimpleTokenizer:  # open_clip's SimpleTokenizer face: what the adapter reads
        context_length, vocab_size, eot_token_id = 77, 49408, 49407

        def __call__(self, texts, context_length=77):
            import torch
            return torch.full((len(texts), context_length), 5, dtype=torch.long)

    fake = types.ModuleType("open_clip")
    fake.get_tokenizer = lambda name: FakeSimpleTokenizer()
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    tok = load_tokenizer("open_clip:ViT-B-16")
    assert (tok.vocab_size, tok.eot_id, tok.context_length) == (49408, 49407, 77)
    assert tok.encode(["a", "b"]).dtype == np.int64 and tok.encode(["a"]).shape == (1, 77)
    with pytest.raises(DataError, match="bpe:PATH"):
        load_tokenizer("sentencepiece")


# ------------------------------------------------------------------------- CLIP smoke
def test_clip_trains_on_a_csv_corpus_with_a_trained_bpe_tokenizer(tmp_path, capsys):
    pytest.importorskip("PIL")
    from reference_trainers.clip import train as clip_train
    from reference_trainers.common.corpora import train_tokenizer
    from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR

    if not pathlib.Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip("Fashion-MNIST not installed")
    path = _csv(tmp_path, n=48, images=True)
    assert train_tokenizer.main(["--from-csv", str(path), "--vocab-size", "300",
                                 "--context-length", "32", "--out", str(tmp_path / "t.json")]) == 0
    out = tmp_path / "run"
    assert clip_train.main(["--preset", "cpu-tiny", "--data", f"csv:{path}", "--tokenizer",
                            f"bpe:{tmp_path / 't.json'}", "--epochs", "2", "--batch-size", "16",
                            "--num-test", "50", "--scan-warmup-epochs", "1", "--threads", "1",
                            "--quiet", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["samples"] == 48 and np.isfinite(rows[-1]["train_loss"])
    assert 0.0 <= rows[-1]["zero_shot_top1"] <= 1.0
    import torch

    state = torch.load(next((out / "checkpoints").glob("*.pt")), weights_only=False)["model"]
    tok = BpeTokenizer.load(tmp_path / "t.json")
    embedding = [v for k, v in state.items() if k.endswith("token_embedding.weight")][0]
    positions = [v for k, v in state.items() if k.endswith("positional_embedding")][0]
    assert embedding.shape[0] == tok.vocab_size and positions.shape[0] == 32
    capsys.readouterr()
    assert clip_train.main(["--preset", "cpu-tiny", "--tokenizer", "bpe:/nowhere.json",
                            "--quiet", "--out", str(tmp_path / "x")]) == 2
    assert "nowhere.json" in capsys.readouterr().err


def test_the_docstring_examples_run():
    import doctest

    from reference_trainers.common import tokenizer_bpe, tokenizer_choice
    from reference_trainers.common.corpora import folder_corpus

    for module in (tokenizer_bpe, tokenizer_choice, folder_corpus):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_the_tokenizer_reads_a_csv_with_a_caption_longer_than_the_csv_modules_limit(tmp_path):
    """The corpus loader took a caption longer than the csv module's default field limit
    (131,072 characters: issue 15); the tokenizer's reader of the same CSV crashed on it."""
    import csv

    from reference_trainers.common.corpora.train_tokenizer import captions_from_csv

    long = "a long caption " * 10_000  # 150,000 characters
    path = tmp_path / "train.csv"
    path.write_text(f'image,caption\n0.png,"{long}"\n1.png,a short one\n2.png,\n')
    limit = csv.field_size_limit(131_072)  # the default, whatever an earlier test set
    try:
        assert captions_from_csv(path) == [long.strip(), "a short one"]
    finally:
        csv.field_size_limit(max(limit, csv.field_size_limit()))
