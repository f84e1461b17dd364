"""Pieces shared by every reference trainer (CLIP and MoCo, PyTorch and JAX).

Framework-free (numpy only): `errors`, `data` (Fashion-MNIST IDX files, subsets, planted
near-duplicates), `captions` (templates, pixel attributes, planted mismatches, zero-shot
prompts), `tokenizer` (fixed word-level vocabulary), `pairs`, `views`, `loop`, `rundir`,
`progress`, `planted`. The PyTorch modules (`torch_data`, `augment`, `evaluation`, `lifecycle`,
`accel`, `corpora`) are not imported here, so a JAX trainer can import this package without
loading torch.
"""

from reference_trainers.common.captions import (CAPTION_TEMPLATES, ZERO_SHOT_TEMPLATES,
                                                CaptionSet, ImageAttributes, class_prompts,
                                                image_attributes, make_captions)
from reference_trainers.common.data import (CLASS_NAMES, DEFAULT_FASHION_MNIST_DIR,
                                            FASHION_MNIST_MEAN, FASHION_MNIST_STD, NUM_CLASSES,
                                            ImageSplits, load_fashion_mnist,
                                            plant_near_duplicates, read_idx, subset,
                                            subset_indices, write_idx)
from reference_trainers.common.errors import DataError, TrainerError
from reference_trainers.common.tokenizer import Tokenizer

__all__ = [
    "CAPTION_TEMPLATES", "CLASS_NAMES", "DEFAULT_FASHION_MNIST_DIR", "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD", "NUM_CLASSES", "ZERO_SHOT_TEMPLATES", "CaptionSet", "DataError",
    "ImageAttributes", "ImageSplits", "Tokenizer", "TrainerError", "class_prompts",
    "image_attributes", "load_fashion_mnist", "make_captions", "plant_near_duplicates",
    "read_idx", "subset", "subset_indices", "write_idx",
]
