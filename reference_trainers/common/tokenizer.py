"""A deterministic word-level tokenizer over a fixed vocabulary (numpy only).

The vocabulary is every word the caption templates, attribute words, class names and zero-shot
prompts can produce, sorted, after four special tokens: <pad>=0, <sot>=1, <eot>=2, <unk>=3. It
is built from those word lists, never from the data, so a checkpoint's token ids stay valid
for any subset, seed or order of the data. Text is lowercased and split into words (a hyphen or
apostrophe inside a word keeps it whole: "t-shirt") and single punctuation marks.

>>> tokenizer = Tokenizer()
>>> tokenizer.tokenize("A photo of an Ankle Boot.")
['a', 'photo', 'of', 'an', 'ankle', 'boot', '.']
>>> tokens = tokenizer.encode(["a photo of a bag."], context_length=10)
>>> tokens.shape, int(tokens[0, 0]) == tokenizer.sot_id
((1, 10), True)
>>> tokenizer.decode(tokens)
['a photo of a bag .']
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from reference_trainers.common.captions import vocabulary_texts
from reference_trainers.common.errors import DataError

PAD, SOT, EOT, UNK = "<pad>", "<sot>", "<eot>", "<unk>"
SPECIAL_TOKENS = (PAD, SOT, EOT, UNK)
_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lowercase `text` and split it into words and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def default_words() -> list[str]:
    """The sorted words of every caption template, attribute, class name and zero-shot prompt."""
    return sorted({word for text in vocabulary_texts() for word in tokenize(text)})


class Tokenizer:
    """Word-level tokenizer: `encode` texts into int64 (n, context_length) token ids. The
    trainers' `--tokenizer word` (tokenizer_choice.py), with the `TextTokenizer` face every
    tokenizer has: vocab_size, eot_id, context_length, encode(texts, context_length=None).

    words: the vocabulary without special tokens (default `default_words()`); it is sorted and
    deduplicated, so the ids depend on the set of words only. context_length: the row length
    of `encode` when it is not given one.
    """

    def __init__(self, words: Iterable[str] | None = None, *, context_length: int = 24):
        self.context_length = context_length  # checked by encode
        words = default_words() if words is None else sorted(set(words) - set(SPECIAL_TOKENS))
        self.vocab: tuple[str, ...] = SPECIAL_TOKENS + tuple(words)
        self._ids = {word: i for i, word in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    pad_id = 0
    sot_id = 1
    eot_id = 2
    unk_id = 3

    def tokenize(self, text: str) -> list[str]:
        """See the module's `tokenize`."""
        return tokenize(text)

    def _encode_one(self, text: str, context_length: int) -> list[int]:
        ids = [self._ids.get(word, self.unk_id) for word in tokenize(text)]
        return [self.sot_id, *ids[:context_length - 2], self.eot_id]

    def encode(self, texts: list[str], context_length: int | None = None) -> np.ndarray:
        """int64 (len(texts), context_length): <sot>, the word ids, <eot>, then <pad> (0);
        context_length None: the tokenizer's own (24 unless built with another).

        Longer texts are truncated so that <eot> stays the last token; unknown words map to
        <unk>. The <eot> position is where a causal text tower reads its sentence embedding.
        """
        if isinstance(texts, str):
            raise DataError(f"encode takes a list of texts, got the single string {texts!r}; "
                            "wrap it in a list")
        context_length = self.context_length if context_length is None else context_length
        if int(context_length) != context_length or context_length < 2:
            raise DataError(f"context_length={context_length!r} must be an integer >= 2 "
                            "(room for <sot> and <eot>)")
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        cache: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            if text not in cache:
                cache[text] = self._encode_one(text, context_length)
            ids = cache[text]
            out[row, :len(ids)] = ids
        return out

    def decode(self, tokens: np.ndarray) -> list[str]:
        """The words of each row of int (n, L) `tokens` between <sot> and <eot>, space-joined
        (special tokens other than <unk> dropped)."""
        tokens = np.atleast_2d(np.asarray(tokens))
        texts = []
        for row in tokens.tolist():
            words = [self.vocab[i] for i in row if i not in (self.pad_id, self.sot_id)]
            if self.eot_id in row:
                words = words[:words.index(EOT)]
            texts.append(" ".join(words))
        return texts
