"""Training crops of a distillation run: labelled and unlabelled samples in ONE crop stream.

``DistillCropDataset`` is ``data.dataset.CropDataset`` (the same crops, MPP handling,
augmentations and (seed, epoch, index) randomness) that also accepts unlabelled samples
(``kind = "images"``): their semantic map is all ``IGNORE`` (255), so the ground-truth loss
ignores every pixel of them (its sums and pixel counts skip 255), and each item carries
``labelled`` (bool scalar) for the KD loss. Unlabelled items have ``has_cls = False``,
``has_inst = False`` and a zero HV target (never used: no foreground).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from ..data.dataset import CropDataset
from ..data.sample import IGNORE, SampleRef


class _NoLabels:
    """Loader of an unlabelled sample: its image and an all-IGNORE semantic map (picklable)."""

    def __init__(self, load: Any):
        self.inner = load

    def size(self) -> tuple[int, int]:
        sz = getattr(self.inner, "size", None)
        if callable(sz):
            return tuple(sz())  # type: ignore[return-value]
        rgb, _, _ = self.inner()
        return (rgb.shape[1], rgb.shape[0])

    def __call__(self):
        rgb, _, _ = self.inner()
        return rgb, None, np.full(rgb.shape[:2], IGNORE, np.uint8)


def is_labelled(ref: SampleRef) -> bool:
    return bool(ref.has_instances or ref.has_classes)


class DistillCropDataset(CropDataset):
    """``CropDataset`` over labelled and unlabelled refs (module doc); same arguments."""

    def __init__(self, refs: Sequence[SampleRef], *args: Any, **kw: Any):
        refs = list(refs)
        self.labelled = [is_labelled(r) for r in refs]
        wrapped = [r if lab else dataclasses.replace(r, load=_NoLabels(r.load), has_classes=True)
                   for r, lab in zip(refs, self.labelled)]
        super().__init__(wrapped, *args, **kw)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        item = super().__getitem__(key)
        idx = key[0] if isinstance(key, tuple) else key
        lab = self.labelled[self.items[idx].ref]
        item["labelled"] = torch.tensor(lab)
        if not lab:
            item["has_cls"] = torch.tensor(False)
        return item

