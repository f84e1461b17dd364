"""Real image-text corpora for the reference trainers (docs/corpora.md).

- `CsvCorpus`: a CSV / TSV of (image path, caption), map-style; ids are row numbers; served by
  ScanSampler like the in-memory Fashion-MNIST data (`batch(ids, augment=, generator=)`).
- `ShardIndex` + `ShardStream`: webdataset-style tar shards, keys -> dense ids, a stream that
  drops pruned samples before reading or decoding them, split over ranks and loader workers;
  wrap it in adapters.torch.stream.PlanIterableDataset for a DataLoader.
- `make_shards`: the CLI that writes shards from a CSV, a folder or Fashion-MNIST.

Decoding needs Pillow (`pip install pillow`); importing this package does not.
"""

from reference_trainers.common.corpora.csv_corpus import (BadSampleError, CorruptImageError,
                                                          CsvCorpus, ImageSpec, decode_image)
from reference_trainers.common.corpora.shards import ShardIndex, ShardStream, StreamStats

__all__ = ["BadSampleError", "CorruptImageError", "CsvCorpus", "ImageSpec", "ShardIndex",
           "ShardStream", "StreamStats", "decode_image"]
