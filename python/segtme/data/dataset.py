"""Torch datasets of working-resolution crops with semantic + HV targets, and a resumable,
DDP-aware epoch sampler.

Every item is a dict of tensors (T = the model's ``tile_size``, working px):

* ``image``   float32 (3, T, T), normalised with the model's mean/std
* ``sem``     int64 (T, T): 0 background, 1..C-1 classes, ``FG_UNKNOWN`` (254) foreground of an
              unknown class, ``IGNORE`` (255) no label (padding)
* ``hv``      float32 (2, T, T) HV target (channel 0 = x); which synthesis is used:
              instance labels present -> ``hv_targets_from_instances`` (HoVer-Net, per-instance
              normalised offsets; separates touching nuclei); semantic-only labels (pseudo-labels)
              -> ``hv_targets_dynamic`` (the paper's connected components, clip((x-c)/10, -1, 1)).
              (absent when the dataset is built with ``with_hv=False``, for models without an HV head)
* ``inst``    int32 (T, T) instance ids (zeros when the sample has none)
* ``has_inst`` / ``has_cls``  bool scalars

Randomness is a pure function of ``(seed, epoch, index)``: the sampler yields ``(index, epoch)``
pairs, so a resumed run and any number of DataLoader workers draw the same crops and
augmentations (tests check that resume reproduces the next step).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import InputError
from .targets import hv_targets_dynamic, hv_targets_from_instances
from .sample import FG_UNKNOWN, SampleRef
from .transforms import AugmentConfig, augment, crop_working, working_size


def ref_size(ref: SampleRef) -> tuple[int, int]:
    """(width, height) in input px (header read when not stored)."""
    if ref.size is None:
        sz = getattr(ref.load, "size", None)
        if callable(sz):
            ref.size = tuple(sz())  # type: ignore[assignment]
        else:
            rgb, _, _ = ref.load()
            ref.size = (rgb.shape[1], rgb.shape[0])
    return ref.size  # type: ignore[return-value]


@dataclass
class CropSpec:
    ref: int
    origin: tuple[int, int] | None  # working px; None = random


class CropDataset(Dataset):
    """Crops of ``tile`` working px from labelled samples.

    train=True: ``repeats[i]`` random crops of sample i per epoch (``"auto"``: one per tile-area
    of the working image, at least 1) with augmentation. train=False: deterministic crops on an
    even grid (at most ``crops_per_image``), no augmentation.
    """

    def __init__(
        self,
        refs: Sequence[SampleRef],
        mpp_work: float,
        tile: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        train: bool = True,
        repeats: Sequence[int] | None = None,
        crops_per_image: int = 4,
        augment_cfg: AugmentConfig | None = None,
        seed: int = 0,
        cache_size: int = 16,
        with_hv: bool = True,
    ):
        self.refs = list(refs)
        self.mpp_work, self.tile, self.train = float(mpp_work), int(tile), train
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.num_classes = int(num_classes)
        self.augment_cfg = augment_cfg or AugmentConfig()
        self.seed = int(seed)
        self.cache_size = int(cache_size)
        self.with_hv = bool(with_hv)
        self._cache: OrderedDict[int, tuple] = OrderedDict()
        self.items: list[CropSpec] = []
        for i, r in enumerate(self.refs):
            if not (r.has_instances or r.has_classes):
                raise InputError(f"{r.name}: sample has no labels; it cannot be used for training")
            ww, wh = working_size(ref_size(r), r.mpp, self.mpp_work)
            if train:
                if repeats is not None:
                    n = int(repeats[i])
                else:
                    n = max(1, round(ww * wh / float(tile * tile)))
                self.items += [CropSpec(i, None)] * n
            else:
                nx, ny = max(1, math.ceil(ww / tile)), max(1, math.ceil(wh / tile))
                grid = [(gx, gy) for gy in range(ny) for gx in range(nx)]
                if len(grid) > crops_per_image:
                    pick = np.linspace(0, len(grid) - 1, crops_per_image).round().astype(int)
                    grid = [grid[k] for k in sorted(set(pick.tolist()))]
                for gx, gy in grid:
                    x0 = 0 if nx == 1 else round(gx * (ww - tile) / (nx - 1))
                    y0 = 0 if ny == 1 else round(gy * (wh - tile) / (ny - 1))
                    self.items.append(CropSpec(i, (max(0, x0), max(0, y0))))

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int) -> tuple:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        v = self.refs[i].load()
        if self.cache_size > 0:
            self._cache[i] = v
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return v

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        idx, epoch = (key if isinstance(key, tuple) else (key, 0))
        spec = self.items[idx]
        ref = self.refs[spec.ref]
        rng = np.random.default_rng([self.seed, int(epoch), int(idx)])
        rgb, inst, sem = self._load(spec.ref)
        if sem is None and inst is not None:
            sem = np.where(inst > 0, FG_UNKNOWN, 0).astype(np.uint8)
        mpp_crop = self.mpp_work
        if self.train and self.augment_cfg.p_scale > 0 and rng.random() < self.augment_cfg.p_scale:
            from .robustness import sample_crop_mpp

            mpp_crop = sample_crop_mpp(rng, self.mpp_work, self.augment_cfg.scale_lo, self.augment_cfg.scale_hi)
        rgb, inst, sem, valid = crop_working(rgb, inst, sem, ref.mpp, mpp_crop, self.tile, spec.origin, rng)
        if self.train:
            rgb, (inst, sem) = augment(rgb, [inst, sem], rng, self.augment_cfg)
        bad = (sem >= self.num_classes) & (sem < FG_UNKNOWN)
        if bad.any():
            raise InputError(
                f"{ref.name}: label value {int(sem[bad].max())} >= the model's {self.num_classes} classes; "
                "set class_map (dataset class -> model class) or classes = false for this dataset"
            )
        x = (rgb.astype(np.float32).transpose(2, 0, 1) / 255.0 - self.mean) / self.std
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(x)),
            "sem": torch.from_numpy(sem.astype(np.int64)),
            "inst": torch.from_numpy((inst if inst is not None else np.zeros(sem.shape, np.int32)).astype(np.int32)),
            "has_inst": torch.tensor(inst is not None),
            "has_cls": torch.tensor(bool(ref.has_classes)),
        }
        if self.with_hv:
            hv = hv_targets_from_instances(inst) if inst is not None else hv_targets_dynamic(sem)
            item["hv"] = torch.from_numpy(hv)
        return item


class EpochSampler(Sampler):
    """Shuffled (per epoch, seeded) index order, split across DDP ranks like
    ``DistributedSampler`` (padded to a multiple of ``num_replicas``), yielding ``(index, epoch)``.
    ``start`` skips the first items of this rank's order (resume mid-epoch without loading them)."""

    def __init__(self, n: int, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        if n <= 0:
            raise InputError("empty training set")
        self.n, self.num_replicas, self.rank, self.shuffle, self.seed = n, num_replicas, rank, shuffle, seed
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        total = self.per_rank * self.num_replicas
        idx += idx[: total - len(idx)] if total > len(idx) else []
        while len(idx) < total:  # tiny datasets: repeat
            idx += idx[: total - len(idx)]
        return idx[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.order()[self.start:]:
            yield (i, self.epoch)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)
