"""Real image-text corpora for the reference trainers (docs/corpora.md).

- `CsvCorpus`: a CSV / TSV of (image path, caption), map-style; ids are row numbers; served by
  ScanSampler like the in-memory Fashion-MNIST data (`batch(ids, augment=, generator=)`).
- `ShardIndex` + `ShardStream`: webdataset-style tar shards, keys -> dense ids, a stream that
  drops pruned samples before reading or decoding them, split over ranks and loader workers;
  wrap it in adapters.torch.stream.PlanIterableDataset for a DataLoader.
- `ImageFolderCorpus`: an ImageNet-style tree DIR/<class>/<image>, image-only (MoCo); ids are
  positions in the sorted file list, labels from the class folders.
- `make_shards`: the CLI that writes shards from a CSV, a folder or Fashion-MNIST
  (`--no-captions`: image-only shards).
- `train_tokenizer`: the CLI that trains a byte-level BPE tokenizer on a corpus's captions.

- `shard_sources`: webdataset URLs (brace patterns, '::' lists, pipe:) and the pipe: stream reader;
  `run_index`: the index a training run keeps in its run directory (or --shard-index PATH).

Decoding needs Pillow (`pip install pillow`); importing this package does not, nor torch: the
names below are imported from their modules on first use (shard_sources is numpy-free and
torch-free, so a command-line parser may use it).
"""

import importlib

_WHERE = {"BadSampleError": "csv_corpus", "CorruptImageError": "csv_corpus",
          "CsvCorpus": "csv_corpus", "ImageSpec": "csv_corpus", "PathCorpus": "csv_corpus",
          "decode_image": "csv_corpus", "ImageFolderCorpus": "folder_corpus",
          "ShardIndex": "shards", "ShardStream": "shards", "StreamStats": "shards"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
