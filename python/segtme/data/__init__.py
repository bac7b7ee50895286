"""Training data: dataset readers (generic folder, PanNuke folds, TCGA-UT, pseudo-label folders),
MPP rescaling to the model's working resolution, crops and the paper's augmentations.

See ``readers.py`` (formats), ``sample.py`` (label encoding: 254 = foreground of unknown class,
255 = ignore), ``transforms.py`` (MPP rescaling, augmentations) and ``dataset.py`` (torch
datasets + resumable DDP sampler)."""

from .readers import KINDS, read_dataset  # noqa: F401
from .sample import FG_UNKNOWN, IGNORE, SampleRef  # noqa: F401
