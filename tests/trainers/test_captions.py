"""Captions, pixel attributes, planted mismatches, zero-shot prompts and the tokenizer of
reference_trainers/common (numpy only)."""

from __future__ import annotations

import doctest
import hashlib
import itertools
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference_trainers.common.captions import (BRIGHTNESS_WORDS, CAPTION_TEMPLATES, SHAPE_WORDS,
                                                SIZE_WORDS, ZERO_SHOT_TEMPLATES, class_prompts,
                                                fix_articles, hash_uniform, image_attributes,
                                                make_captions)
from reference_trainers.common.data import (CLASS_NAMES, DEFAULT_FASHION_MNIST_DIR,
                                            load_fashion_mnist)
from reference_trainers.common import captions as captions_module
from reference_trainers.common import tokenizer as tokenizer_module
from reference_trainers.common.errors import DataError
from reference_trainers.common.tokenizer import Tokenizer, tokenize

TOKENIZER = Tokenizer()
CLASS_TOKENS = [tuple(tokenize(name)) for name in CLASS_NAMES]


def named_classes(text: str) -> set[int]:
    """The classes whose name appears in `text` as a whole token sequence ("shirt" is not
    found inside "t-shirt")."""
    words = tokenize(text)
    return {c for c, name in enumerate(CLASS_TOKENS)
            if any(tuple(words[i:i + len(name)]) == name for i in range(len(words)))}


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    tops, lefts = rng.integers(0, 14, n), rng.integers(0, 14, n)
    heights, widths = rng.integers(1, 15, n), rng.integers(1, 15, n)
    values = rng.integers(1, 256, n)
    for i in range(n):
        images[i, tops[i]:tops[i] + heights[i], lefts[i]:lefts[i] + widths[i]] = values[i]
    return images, rng.integers(0, 10, n)


IMAGES, LABELS = random_images(3000)


# -- templates and prompts ---------------------------------------------------------------------

def test_there_are_many_caption_templates_and_a_prompt_ensemble():
    assert len(CAPTION_TEMPLATES) >= 20 and len(set(CAPTION_TEMPLATES)) == len(CAPTION_TEMPLATES)
    assert 8 <= len(ZERO_SHOT_TEMPLATES) <= 12
    assert all("{cls}" in t for t in CAPTION_TEMPLATES)


def test_class_prompts_fill_every_template_for_every_class():
    prompts = class_prompts()
    assert len(prompts) == 10 and all(len(row) == len(ZERO_SHOT_TEMPLATES) for row in prompts)
    for c, row in enumerate(prompts):
        assert all(named_classes(p) == {c} for p in row)
    assert prompts[9][0] == "a photo of an ankle boot."
    assert prompts[0][0] == "a photo of a t-shirt."


def test_class_prompts_reject_a_template_without_exactly_one_empty_field():
    for bad in (["a photo of a {cls}."], ["a {} and a {}."], ["no field"]):
        with pytest.raises(DataError, match="exactly one empty field"):
            class_prompts(bad)
    with pytest.raises(DataError, match="non-empty list"):
        class_prompts("a photo of a {}.")


def test_articles_follow_the_next_word():
    assert fix_articles("a ankle boot, a bag, a item") == "an ankle boot, a bag, an item"


# -- attributes --------------------------------------------------------------------------------

def test_attributes_of_drawn_shapes():
    images = np.zeros((4, 28, 28), np.uint8)
    images[1, 10:12, 2:26] = 250     # wide, light, small
    images[2, 0:28, 12:16] = 40      # narrow, dark
    images[3, 1:27, 1:27] = 150      # square, grey, large
    attrs = image_attributes(images)
    assert attrs.brightness.tolist() == [0, 2, 0, 1]
    assert attrs.size.tolist() == [0, 0, 0, 2]
    assert attrs.shape.tolist() == [1, 2, 0, 1]


@pytest.mark.skipif(not pathlib.Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                    reason=f"Fashion-MNIST is not installed in {DEFAULT_FASHION_MNIST_DIR} "
                           "(apt-get install -y dataset-fashion-mnist)")
def test_attribute_cutoffs_are_terciles_of_the_training_split():
    attrs = image_attributes(load_fashion_mnist().train_images)
    for codes in (attrs.brightness, attrs.size, attrs.shape):
        assert np.allclose(np.bincount(codes, minlength=3) / len(codes), 1 / 3, atol=0.03)


# -- captions ----------------------------------------------------------------------------------

def test_captions_are_deterministic_per_seed():
    first = make_captions(IMAGES, LABELS, seed=4)
    assert first.texts == make_captions(IMAGES, LABELS, seed=4).texts
    other = make_captions(IMAGES, LABELS, seed=5)
    assert sum(a != b for a, b in zip(first.texts, other.texts)) > len(IMAGES) // 2


def test_a_caption_depends_on_its_key_not_on_the_other_samples():
    full = make_captions(IMAGES, LABELS, seed=2, mismatch_share=0.3)
    ids = np.random.default_rng(0).permutation(len(IMAGES))[:500]
    part = make_captions(IMAGES[ids], LABELS[ids], seed=2, mismatch_share=0.3, keys=ids)
    assert part.texts == tuple(full.texts[i] for i in ids)
    np.testing.assert_array_equal(part.mismatched, full.mismatched[ids])


def test_clean_captions_name_their_class_and_every_template_is_used():
    captions = make_captions(IMAGES, LABELS, seed=0)
    assert not captions.mismatched.any()
    np.testing.assert_array_equal(captions.caption_labels, LABELS)
    assert all(named_classes(t) == {c} for t, c in zip(captions.texts, LABELS))
    assert set(captions.template_ids.tolist()) == set(range(len(CAPTION_TEMPLATES)))


def test_captions_carry_the_image_attributes():
    captions = make_captions(IMAGES, LABELS, seed=0)
    attrs = captions.attributes
    for i, (text, template) in enumerate(zip(captions.texts, captions.template_ids)):
        words = set(tokenize(text))
        for field, vocab, codes in (("{b}", BRIGHTNESS_WORDS, attrs.brightness),
                                    ("{s}", SIZE_WORDS, attrs.size),
                                    ("{w}", SHAPE_WORDS, attrs.shape)):
            if field in CAPTION_TEMPLATES[template]:
                assert vocab[codes[i]] in words, text


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5])
def test_planted_mismatches_are_recorded_exactly_at_the_asked_share(share):
    n = len(LABELS)
    captions = make_captions(IMAGES, LABELS, seed=1, mismatch_share=share)
    np.testing.assert_array_equal(captions.mismatched, captions.caption_labels != LABELS)
    count = int(captions.mismatched.sum())
    assert abs(count - n * share) <= 4 * np.sqrt(n * share * (1 - share))
    for text, named in zip(captions.texts, captions.caption_labels):
        assert named_classes(text) == {int(named)}


def test_wrong_classes_are_uniform_over_the_other_nine():
    labels = np.zeros(18000, np.int64)
    images = np.zeros((18000, 28, 28), np.uint8)
    captions = make_captions(images, labels, seed=3, mismatch_share=1.0)
    counts = np.bincount(captions.caption_labels, minlength=10)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] - 2000) <= 4 * np.sqrt(2000 * 8 / 9))


def test_mismatch_share_zero_and_one():
    assert not make_captions(IMAGES, LABELS, seed=0, mismatch_share=0.0).mismatched.any()
    assert make_captions(IMAGES, LABELS, seed=0, mismatch_share=1.0).mismatched.all()


def test_bad_caption_inputs_raise():
    with pytest.raises(DataError, match="mismatch_share=1.5"):
        make_captions(IMAGES, LABELS, seed=0, mismatch_share=1.5)
    with pytest.raises(DataError, match=r"span \[0, 10\]"):
        make_captions(IMAGES[:2], np.array([0, 10]), seed=0)
    with pytest.raises(DataError, match=r"labels have shape \(2,\)"):
        make_captions(IMAGES[:3], np.array([0, 1]), seed=0)
    with pytest.raises(DataError, match="keys"):
        make_captions(IMAGES[:2], LABELS[:2], seed=0, keys=np.array([0, -1]))


@given(st.integers(-2**63, 2**64 - 1), st.integers(0, 2**40), st.integers(0, 7))
def test_hash_uniform_is_in_unit_interval_and_elementwise(seed, key, stream):
    keys = np.array([key, key + 1, key])
    values = hash_uniform(seed, keys, stream)
    assert np.all((values >= 0) & (values < 1)) and values[0] == values[2]
    assert hash_uniform(seed, keys[::-1], stream)[0] == values[2]


# -- tokenizer ---------------------------------------------------------------------------------

def every_possible_caption():
    for template in CAPTION_TEMPLATES:
        for cls, b, s, w in itertools.product(CLASS_NAMES, BRIGHTNESS_WORDS, SIZE_WORDS,
                                              SHAPE_WORDS):
            yield fix_articles(template.format(cls=cls, b=b, s=s, w=w))


def test_vocabulary_covers_every_caption_and_prompt_without_truncation():
    texts = sorted(set(every_possible_caption())) + [p for row in class_prompts() for p in row]
    tokens = TOKENIZER.encode(texts, context_length=24)
    assert not (tokens == TOKENIZER.unk_id).any()
    assert np.all(tokens[np.arange(len(texts)), (tokens != 0).sum(1) - 1] == TOKENIZER.eot_id)
    assert TOKENIZER.decode(tokens) == [" ".join(tokenize(t)) for t in texts]


def test_vocabulary_does_not_depend_on_word_order():
    words = list(TOKENIZER.vocab[4:])
    shuffled = [words[i] for i in np.random.default_rng(0).permutation(len(words))]
    assert Tokenizer(shuffled + shuffled[:5]).vocab == TOKENIZER.vocab
    assert TOKENIZER.vocab[:4] == ("<pad>", "<sot>", "<eot>", "<unk>")
    assert TOKENIZER.vocab_size == len(TOKENIZER.vocab)


def test_vocabulary_is_pinned_so_checkpoints_stay_valid():
    digest = hashlib.sha256("\n".join(TOKENIZER.vocab).encode()).hexdigest()[:16]
    # Changing a template's words renumbers tokens and invalidates saved text towers: update this
    # pin only on purpose.
    assert (TOKENIZER.vocab_size, digest) == (66, "d8f855293bfa5b08")


@given(st.text(max_size=80), st.integers(2, 40))
def test_encode_shape_sot_one_eot_then_padding(text, context_length):
    row = TOKENIZER.encode([text], context_length=context_length)[0]
    assert row.shape == (context_length,) and row.dtype == np.int64
    assert row[0] == TOKENIZER.sot_id and np.count_nonzero(row == TOKENIZER.eot_id) == 1
    end = int(np.flatnonzero(row == TOKENIZER.eot_id)[0])
    assert np.all(row[end + 1:] == TOKENIZER.pad_id) and np.all(row[:end] != TOKENIZER.pad_id)
    assert end == min(len(tokenize(text)) + 1, context_length - 1)


@given(st.lists(st.sampled_from(TOKENIZER.vocab[4:]), max_size=40), st.integers(2, 30))
def test_known_words_round_trip_and_truncation_keeps_eot_last(words, context_length):
    tokens = TOKENIZER.encode([" ".join(words)], context_length=context_length)
    assert TOKENIZER.decode(tokens) == [" ".join(words[:context_length - 2])]


@given(st.lists(st.from_regex(r"[a-z]{1,10}", fullmatch=True)
                .filter(lambda w: w not in TOKENIZER.vocab), min_size=1, max_size=10))
def test_unknown_words_map_to_unk(words):
    row = TOKENIZER.encode([" ".join(words)], context_length=24)[0]
    assert row[1:len(words) + 1].tolist() == [TOKENIZER.unk_id] * len(words)


def test_tokenizer_splits_punctuation_and_lowercases():
    assert tokenize("A T-Shirt, Ankle-Boot's: ok!") == ["a", "t-shirt", ",", "ankle-boot's", ":",
                                                        "ok", "!"]


def test_encode_rejects_a_bare_string_and_a_tiny_context():
    with pytest.raises(DataError, match="single string"):
        TOKENIZER.encode("a photo")
    with pytest.raises(DataError, match="context_length=1"):
        TOKENIZER.encode(["a photo"], context_length=1)


# -- the floor rule and the docstring examples -------------------------------------------------

def test_numpy_modules_load_no_framework():
    """data, captions and tokenizer are shared with the JAX trainer: torch stays out."""
    code = ("import sys, reference_trainers.common, reference_trainers.common.data, "
            "reference_trainers.common.captions, reference_trainers.common.tokenizer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jax')))")
    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", [captions_module, tokenizer_module])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_every_tokenizer_has_one_encode_signature_and_the_word_one_its_own_length():
    """The word, BPE and open_clip tokenizers share `encode(texts, context_length=None)`; None
    means the tokenizer's own context length (24 for the word tokenizer unless built with
    another), and the word tokenizer's ids do not depend on how it was built."""
    import inspect

    from reference_trainers.common.tokenizer_bpe import BpeTokenizer
    from reference_trainers.common.tokenizer_choice import OpenClipTokenizer, load_tokenizer

    signatures = {cls.__name__: list(inspect.signature(cls.encode).parameters.values())
                  for cls in (Tokenizer, BpeTokenizer, OpenClipTokenizer)}
    for name, params in signatures.items():
        assert [(p.name, p.default) for p in params] == \
            [("self", inspect.Parameter.empty), ("texts", inspect.Parameter.empty),
             ("context_length", None)], name
    texts = ["a photo of a bag.", "a dark wide shirt"]
    default, short = Tokenizer(), load_tokenizer("word", context_length=8)
    assert default.encode(texts).shape == (2, 24) and short.encode(texts).shape == (2, 8)
    np.testing.assert_array_equal(short.encode(texts), default.encode(texts, 8))
    np.testing.assert_array_equal(short.encode(texts, 24), default.encode(texts))
    with pytest.raises(DataError, match="context_length=1"):
        Tokenizer(context_length=1).encode(texts)
