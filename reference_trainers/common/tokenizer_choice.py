"""The trainers' `--tokenizer word|bpe:PATH|open_clip[:MODEL]`: one function that returns a
tokenizer carrying its own context length, <eot> id and vocabulary size, so the text tower is
built to match whatever tokenizer the run uses.

- `word` (default): the pinned word-level tokenizer of the Fashion-MNIST captions
  (`tokenizer.Tokenizer`), at the config's context length (24): results do not change.
- `bpe:PATH`: a byte-level BPE file trained on the corpus's captions (`tokenizer_bpe`,
  `python -m reference_trainers.common.corpora.train_tokenizer`); its context length is stored
  in the file (77 by default).
- `open_clip` or `open_clip:MODEL`: `open_clip.get_tokenizer(MODEL)` (default "ViT-B-32", CLIP's
  BPE: 49,408 ids, <eot> 49407, context 77) when the user has installed open_clip.

Every tokenizer returned has `vocab_size`, `eot_id`, `context_length` and
`encode(texts, context_length=None) -> int64 (n, L)`.

>>> tok = load_tokenizer("word", context_length=24)
>>> tok.context_length, tok.eot_id, tok.encode(["a bag."]).shape
(24, 2, (1, 24))
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from reference_trainers.common.errors import DataError
from reference_trainers.common.tokenizer import Tokenizer

__all__ = ["OpenClipTokenizer", "TextTokenizer", "WordTokenizer", "load_tokenizer"]

OPEN_CLIP_DEFAULT_MODEL = "ViT-B-32"


class TextTokenizer(Protocol):
    """What a trainer needs of a tokenizer."""

    vocab_size: int
    eot_id: int
    context_length: int

    def encode(self, texts: list[str], context_length: int | None = None) -> np.ndarray: ...


# The word-level tokenizer under the name --tokenizer gives it.
WordTokenizer = Tokenizer


class OpenClipTokenizer:
    """open_clip's tokenizer for MODEL behind the TextTokenizer face (numpy int64 out)."""

    def __init__(self, model_name: str = OPEN_CLIP_DEFAULT_MODEL):
        try:
            import open_clip
        except ImportError as err:
            raise DataError(f"--tokenizer open_clip needs the open_clip package ({err}); install "
                            "it with `pip install open_clip_torch`, or use --tokenizer word or "
                            "--tokenizer bpe:PATH (train_tokenizer)") from err
        self.model_name = model_name
        self._tokenizer = open_clip.get_tokenizer(model_name)
        inner = self._tokenizer
        self.context_length = int(getattr(inner, "context_length", 77) or 77)
        vocab = getattr(inner, "vocab_size", None)
        if vocab is None and hasattr(inner, "encoder"):
            vocab = len(inner.encoder)
        eot = getattr(inner, "eot_token_id", None)
        if vocab is None or eot is None:
            raise DataError(f"open_clip's tokenizer for {model_name!r} "
                            f"({type(inner).__name__}) exposes no vocab_size / eot_token_id; "
                            "use a model with CLIP's BPE tokenizer (e.g. ViT-B-32), or "
                            "--tokenizer bpe:PATH")
        self.vocab_size, self.eot_id = int(vocab), int(eot)

    def encode(self, texts: list[str], context_length: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            raise DataError(f"encode takes a list of texts, got the single string {texts!r}")
        length = self.context_length if context_length is None else context_length
        return np.asarray(self._tokenizer(list(texts), context_length=length), dtype=np.int64)


def load_tokenizer(spec: str, *, context_length: int = 24) -> TextTokenizer:
    """The tokenizer named by `spec` (see the module's docstring). `context_length` applies to
    `word` only; BPE files and open_clip carry their own."""
    if spec == "word":
        return Tokenizer(context_length=context_length)
    if spec.startswith("bpe:") and len(spec) > 4:
        from reference_trainers.common.tokenizer_bpe import BpeTokenizer

        return BpeTokenizer.load(spec[4:])
    if spec == "open_clip" or spec.startswith("open_clip:"):
        return OpenClipTokenizer(spec.partition(":")[2] or OPEN_CLIP_DEFAULT_MODEL)
    raise DataError(f"--tokenizer {spec!r}: choose word (the Fashion-MNIST demo's), bpe:PATH (a "
                    "file from python -m reference_trainers.common.corpora.train_tokenizer) or "
                    "open_clip[:MODEL] (needs pip install open_clip_torch)")
