"""An ImageNet-style folder tree, DIR/<class>/<image>, as an image-only map-style corpus (MoCo).

Ids are positions in the sorted list of the tree's image files (relative POSIX paths, so the
class folder sorts first): the same tree gives the same ids on every rank and after a resume.
`fingerprint` hashes that list; the MoCo trainer stores it in the run directory and refuses to
resume on a tree whose list changed (ids would no longer name the same images).

Class names are the first-level folder names, sorted; `labels[id]` is the class index. The
trainer keeps them in the run directory (corpus_labels.npz) for a linear probe of your own.

Bad samples keep their id and are never served: a broken link or an empty file is found when
the tree is listed (`skipped`); an image Pillow cannot decode, or a file removed since, when it
is read (added to `skipped` then, and left out in later epochs).

>>> import pathlib, tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> (root / "cat").mkdir(); _ = (root / "cat" / "a.png").write_bytes(b"")
>>> corpus = ImageFolderCorpus(root, spec=ImageSpec.cpu())
>>> len(corpus), corpus.class_names, corpus.skipped
(1, ('cat',), {0: 'empty file cat/a.png'})
"""

from __future__ import annotations

import hashlib
import os
import pathlib

from reference_trainers.common.corpora.csv_corpus import ImageSpec, PathCorpus
from reference_trainers.common.corpora.images import list_image_tree, unreadable_in_tree

__all__ = ["ImageFolderCorpus"]


class ImageFolderCorpus(PathCorpus):
    """Every image under root/<class>/ (any depth below the class folder), image-only.

    Args: root: the tree (point it at the training split, e.g. imagenet/train); spec: the
      ImageSpec images become.
    Attributes: paths (N,) absolute paths; relative (N,) POSIX paths under root; labels int64
      (N,); class_names (C,); captions None; skipped {id: reason}; fingerprint (hex str).
    """

    def __init__(self, root: str | os.PathLike, *, spec: ImageSpec):
        self.root, self.spec, self.tokenizer = pathlib.Path(root), spec, None
        self.source = str(self.root)
        self.relative, self.labels, self.class_names = list_image_tree(self.root)
        self.paths = [str(self.root / r) for r in self.relative]
        self.captions = None
        self.repeats = 0
        self.skipped: dict[int, str] = unreadable_in_tree(self.root, self.relative)
        self.fingerprint = hashlib.sha256("\n".join(self.relative).encode("utf-8")).hexdigest()

    @property
    def listing(self) -> list[str]:
        """The names fingerprinted in corpus.json: POSIX paths under root (moving the tree
        keeps a run resumable)."""
        return self.relative
