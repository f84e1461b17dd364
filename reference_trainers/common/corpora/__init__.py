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

Decoding needs Pillow (`pip install pillow`); importing this package does not.
"""

from reference_trainers.common.corpora.csv_corpus import (BadSampleError, CorruptImageError,
                                                          CsvCorpus, ImageSpec, PathCorpus,
                                                          decode_image)
from reference_trainers.common.corpora.folder_corpus import ImageFolderCorpus
from reference_trainers.common.corpora.shards import ShardIndex, ShardStream, StreamStats

__all__ = ["BadSampleError", "CorruptImageError", "CsvCorpus", "ImageFolderCorpus", "ImageSpec",
           "PathCorpus", "ShardIndex", "ShardStream", "StreamStats", "decode_image"]
