"""A byte-level BPE tokenizer for real captions: trained on a corpus's own captions, offline,
numpy-free pure Python, deterministic, saved as one small JSON file.

Why BPE, and why here. The word-level `tokenizer.Tokenizer` knows the ~66 words of the
Fashion-MNIST captions and maps every other word to one <unk> id: useless for a real corpus.
CLIP tokenizes with a byte-pair encoding (Radford et al. 2021, sec. 2.4; Sennrich et al. 2016);
a byte-level one (GPT-2's variant) starts from the 256 byte values, so every string, in any
script, encodes without an unknown token and decodes back exactly. We write the trainer
ourselves rather than depend on Hugging Face `tokenizers`, whose wheel pulls in
`huggingface-hub` and its network stack: a few hundred lines cover what a reference trainer
needs (docs/corpora.md, "A tokenizer for real captions").

Ids: 0 <pad>, 1 <sot>, 2 <eot>, then the 256 bytes (byte b has id 3 + b), then one id per
merge in the order it was learnt. `encode` writes <sot>, the ids, <eot>, then <pad> (0), like
the word-level tokenizer, so the text towers read the sentence at the first <eot>.

Normalisation before splitting: whitespace runs become one space and the ends are stripped
(CLIP's `whitespace_clean`); with lowercase=True (default, as CLIP) the text is lowercased.
`decode(encode([t]))` gives back the normalised text exactly unless it was truncated.

Training (`train_bpe`) is deterministic and ignores the order of the captions: words are counted
over the whole corpus, and each step merges the most frequent adjacent pair, ties going to the
pair whose byte strings sort first.

>>> tok = train_bpe(["a red shirt", "a red dress", "two red shirts"], vocab_size=300)
>>> tok.vocab_size, tok.eot_id  # 3 specials + 256 bytes + 8 merges seen at least twice
(267, 2)
>>> ids = tok.encode(["A red shirt, très chic"], context_length=32)
>>> int(ids[0, 0]) == tok.sot_id, tok.decode(ids)
(True, ['a red shirt, très chic'])
"""

from __future__ import annotations

import heapq
import json
import os
import pathlib
import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

from reference_trainers.common.errors import DataError

__all__ = ["BpeTokenizer", "FORMAT", "NUM_SPECIAL", "train_bpe"]

FORMAT = "scan-byte-bpe"
VERSION = 1
PAD_ID, SOT_ID, EOT_ID = 0, 1, 2
NUM_SPECIAL = 3
_BYTE_BASE = NUM_SPECIAL                      # byte b -> id 3 + b
_FIRST_MERGE_ID = NUM_SPECIAL + 256
# Pre-tokens (GPT-2's split, in Python's `re`): English contractions, a letter run with its
# leading space ([^\W\d_] is any Unicode letter), up to 3 digits, a punctuation run, any other
# single character ("_", "²"), spaces: every character lands in a pre-token (a property test
# checks the round trip). Merges never cross a pre-token, so " red" is learnt as one unit.
_PRETOKEN = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+| ?\S|\s+")


def normalise(text: str, *, lowercase: bool) -> str:
    """Collapse whitespace runs to one space, strip the ends, lowercase if asked."""
    text = " ".join(text.split())
    return text.lower() if lowercase else text


def pretokenize(text: str) -> list[str]:
    """The pre-tokens of already normalised `text` (their concatenation is the text)."""
    return _PRETOKEN.findall(text)


def _word_symbols(word: str) -> tuple[int, ...]:
    return tuple(_BYTE_BASE + b for b in word.encode("utf-8"))


def _merge_pair(symbols: list[int] | tuple[int, ...], pair: tuple[int, int],
                merged: int) -> list[int]:
    """`symbols` with every non-overlapping occurrence of `pair`, left to right, replaced by
    the id `merged`: one BPE merge, as encoding applies it and as training counts it."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


class BpeTokenizer:
    """Byte-level BPE over a list of merges; `encode` texts into int64 (n, context_length).

    merges: (left id, right id) pairs in the order learnt; merge i makes id 259 + i.
    context_length: the default row length of `encode` (CLIP: 77).
    """

    pad_id, sot_id, eot_id = PAD_ID, SOT_ID, EOT_ID

    def __init__(self, merges: Iterable[tuple[int, int]], *, context_length: int = 77,
                 lowercase: bool = True):
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.context_length = _check_context_length(context_length)
        self.lowercase = bool(lowercase)
        self.token_bytes: list[bytes] = [b""] * NUM_SPECIAL + [bytes([b]) for b in range(256)]
        for i, (a, b) in enumerate(self.merges):
            if not (NUM_SPECIAL <= a < len(self.token_bytes)
                    and NUM_SPECIAL <= b < len(self.token_bytes)):
                raise DataError(f"merge {i} = ({a}, {b}) names an id that is neither a byte nor "
                                f"an earlier merge (ids {NUM_SPECIAL}..{len(self.token_bytes) - 1}"
                                "); the tokenizer file is corrupt: train it again")
            self.token_bytes.append(self.token_bytes[a] + self.token_bytes[b])
        self._rank = {pair: i for i, pair in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    # -- encoding ----------------------------------------------------------------------------
    def _encode_word(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(_word_symbols(word))
        while len(symbols) > 1:
            ranks = [self._rank.get(pair, -1) for pair in zip(symbols, symbols[1:])]
            best = min((r for r in ranks if r >= 0), default=-1)
            if best < 0:
                break
            symbols = _merge_pair(symbols, self.merges[best], _FIRST_MERGE_ID + best)
        if len(self._cache) < 1_000_000:  # bounded: a streaming corpus has a long word tail
            self._cache[word] = symbols
        return symbols

    def ids(self, text: str) -> list[int]:
        """The token ids of one text, without <sot> / <eot> and without truncation."""
        text = normalise(text, lowercase=self.lowercase)
        return [i for word in pretokenize(text) for i in self._encode_word(word)]

    def encode(self, texts: list[str], context_length: int | None = None) -> np.ndarray:
        """int64 (len(texts), context_length): <sot>, the ids, <eot>, then <pad> (0).

        context_length: default `self.context_length`. A longer text is truncated so <eot>
        stays its last token (a truncated multi-byte character decodes as U+FFFD).
        """
        if isinstance(texts, str):
            raise DataError(f"encode takes a list of texts, got the single string {texts!r}; "
                            "wrap it in a list")
        length = self.context_length if context_length is None else \
            _check_context_length(context_length)
        out = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.ids(text)[:length - 2], self.eot_id]
            out[row, :len(ids)] = ids
        return out

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts)

    def decode(self, tokens: np.ndarray) -> list[str]:
        """The text of each row of int (n, L) `tokens` up to its first <eot> (special tokens
        dropped; invalid UTF-8 from a truncation becomes U+FFFD)."""
        texts = []
        for row in np.atleast_2d(np.asarray(tokens)).tolist():
            if self.eot_id in row:
                row = row[:row.index(self.eot_id)]
            data = b"".join(self.token_bytes[i] for i in row if i >= NUM_SPECIAL)
            texts.append(data.decode("utf-8", errors="replace"))
        return texts

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "lowercase": self.lowercase,
                "context_length": self.context_length, "special_tokens": ["<pad>", "<sot>",
                                                                          "<eot>"],
                "merges": [list(pair) for pair in self.merges]}

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON (atomically)."""
        path = pathlib.Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BpeTokenizer":
        """Read a file written by `save` (or by `python -m
        reference_trainers.common.corpora.train_tokenizer`)."""
        try:
            data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"cannot read BPE tokenizer {path}: {err}; train one with python "
                            "-m reference_trainers.common.corpora.train_tokenizer") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT \
                or data.get("version") != VERSION:
            got = (data.get("format"), data.get("version")) if isinstance(data, dict) else data
            raise DataError(f"{path} is not a {FORMAT} v{VERSION} file (found {got!r}); train "
                            "one with python -m reference_trainers.common.corpora.train_tokenizer")
        return cls(data["merges"], context_length=data["context_length"],
                   lowercase=data["lowercase"])


def _check_context_length(context_length) -> int:
    if int(context_length) != context_length or context_length < 2:
        raise DataError(f"context_length={context_length!r} must be an integer >= 2 (room for "
                        "<sot> and <eot>)")
    return int(context_length)


def train_bpe(texts: Iterable[str], vocab_size: int, *, context_length: int = 77,
              lowercase: bool = True, min_frequency: int = 2) -> BpeTokenizer:
    """Learn byte-level BPE merges from `texts` until the vocabulary holds `vocab_size` ids
    (3 specials + 256 bytes + merges) or no pair occurs `min_frequency` times.

    Deterministic: words are counted over all texts (their order does not matter); each step
    merges the pair with the highest count, ties going to the smallest (left bytes, right
    bytes). Cost: one pass over the texts, then per merge only the words holding the pair.
    """
    if int(vocab_size) != vocab_size or vocab_size < _FIRST_MERGE_ID:
        raise DataError(f"vocab_size={vocab_size!r} must be an integer >= {_FIRST_MERGE_ID} "
                        "(3 special tokens + 256 bytes)")
    if min_frequency < 1:
        raise DataError(f"min_frequency={min_frequency!r} must be >= 1")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(pretokenize(normalise(text, lowercase=lowercase)))
    ordered = sorted(counts)  # a fixed order, whatever order the texts came in
    words = [list(_word_symbols(w)) for w in ordered]
    freqs = [counts[w] for w in ordered]
    token_bytes = [b""] * NUM_SPECIAL + [bytes([b]) for b in range(256)]
    pair_count: Counter[tuple[int, int]] = Counter()
    holders: dict[tuple[int, int], set[int]] = {}
    for w, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_count[pair] += freqs[w]
            holders.setdefault(pair, set()).add(w)

    def entry(pair):
        return (-pair_count[pair], token_bytes[pair[0]], token_bytes[pair[1]], pair)

    heap = [entry(pair) for pair in pair_count]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(token_bytes) < vocab_size and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if -neg != pair_count.get(pair, 0):
            continue  # a stale entry: the pair's count changed since it was pushed
        if -neg < min_frequency:
            break
        new_id = len(token_bytes)
        token_bytes.append(token_bytes[pair[0]] + token_bytes[pair[1]])
        merges.append(pair)
        changed: set[tuple[int, int]] = set()
        for w in sorted(holders.pop(pair, ())):
            symbols = words[w]
            if len(symbols) < 2:
                continue
            for old in zip(symbols, symbols[1:]):
                pair_count[old] -= freqs[w]
                changed.add(old)
            merged = words[w] = _merge_pair(symbols, pair, new_id)
            for new in zip(merged, merged[1:]):
                pair_count[new] += freqs[w]
                holders.setdefault(new, set()).add(w)
                changed.add(new)
        pair_count.pop(pair, None)
        for other in changed:
            if pair_count.get(other, 0) > 0:
                heapq.heappush(heap, entry(other))
            else:
                pair_count.pop(other, None)
    return BpeTokenizer(merges, context_length=context_length, lowercase=lowercase)
