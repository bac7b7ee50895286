"""Training crops for the mitosis teacher (IO at the edge; the crops themselves are pure).

* Positives: the AMi-Br crops (``mitoses-amibr/index.csv``: 128 px at 40x ≈ 0.25 µm/px, centred
  on a mitotic figure; class normal / atypical), resampled to the model's MPP.
* Negatives: nucleus-centred crops of the labelled nuclei of the other folders (MoNuSeg, CoNSeP,
  GBM/TCGA tiles, NuCLS), whose window fits inside the image (no padding: padding would be a
  cue only negatives carry). They come from other slides and centres than the positives; the
  model normalises every crop's colour itself (``model.MitosisNet.normalise``) and training adds
  stain / scale / blur augmentation. They may hold a few unlabelled mitoses (label noise).

Splits: positives by ``slide`` (held-out slides); negatives by source image (the shipped default
model's held-out images + NuCLS ``test_*``), so no image or slide is in both.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .crops import centred_windows, inside

log = logging.getLogger(__name__)

#: negatives: (folder, default MPP when index.json has none)
NEGATIVE_FOLDERS = (("monuseg-train", 0.25), ("consep-train", 0.25), ("gbm-tcga-tiles", 0.5), ("nucls-sample", 0.25))


@dataclass
class CropSet:
    """Crops at ``mpp`` µm/px, (N, S, S, 3) uint8, with per-crop label and provenance."""

    x: np.ndarray
    mitotic: np.ndarray      # (N,) uint8 1 = mitotic figure
    atypical: np.ndarray     # (N,) int8 1 atypical / 0 normal / -1 n.a. (negatives)
    group: np.ndarray        # (N,) str: slide (positives) or source image (negatives)
    dataset: np.ndarray      # (N,) str
    held_out: np.ndarray     # (N,) bool
    mpp: float

    def subset(self, m: np.ndarray) -> "CropSet":
        return CropSet(self.x[m], self.mitotic[m], self.atypical[m], self.group[m], self.dataset[m], self.held_out[m],
                       self.mpp)

    def save(self, path: Path) -> None:
        from ..export.atomic import atomic_write

        with atomic_write(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=self.x, mitotic=self.mitotic, atypical=self.atypical, group=self.group,
                         dataset=self.dataset, held_out=self.held_out, mpp=np.float64(self.mpp))

    @classmethod
    def load(cls, path: Path) -> "CropSet":
        z = np.load(path, allow_pickle=False)
        return cls(z["x"], z["mitotic"], z["atypical"], z["group"], z["dataset"], z["held_out"], float(z["mpp"]))


def held_out_slide(slide: str, fraction: float, seed: int) -> bool:
    """Deterministic slide-level split: a slide is held out when the hash of (seed, slide) falls
    below ``fraction``."""
    h = hashlib.sha1(f"{seed}:{slide}".encode()).digest()
    return int.from_bytes(h[:4], "big") / 2**32 < fraction


def _resample(rgb: np.ndarray, s: float) -> np.ndarray:
    if abs(s - 1.0) < 1e-6:
        return rgb
    from ..resample import resample

    return resample(rgb, s)


def positive_crops(root: Path, size: int, mpp: float, src_mpp: float = 0.25, held_out_fraction: float = 0.2,
                   seed: int = 0) -> CropSet:
    """The AMi-Br crops at ``mpp``, centre ``size`` px each."""
    from ..data.sample import read_rgb

    idx = root / "index.csv"
    if not idx.is_file():
        raise InputError(f"mitosis positives: {idx} not found")
    rows = list(csv.DictReader(idx.open()))
    xs, aty, grp = [], [], []
    for r in rows:
        rgb = _resample(read_rgb(root / r["file"]), src_mpp / mpp)
        c = np.array([[rgb.shape[1] / 2.0, rgb.shape[0] / 2.0]])
        if not inside(rgb.shape, c, size)[0]:
            raise InputError(f"{r['file']}: {rgb.shape[:2]} px at {mpp} µm/px is smaller than the {size} px crop")
        xs.append(centred_windows(rgb, c, size)[0])
        aty.append(1 if r["class"] == "atypical" else 0)
        grp.append(r["slide"])
    grp_a = np.array(grp)
    ho = np.array([held_out_slide(g, held_out_fraction, seed) for g in grp_a])
    n = len(rows)
    return CropSet(np.stack(xs), np.ones(n, np.uint8), np.array(aty, np.int8), grp_a,
                   np.array([f"amibr-{r['dataset']}" for r in rows]), ho, mpp)


def default_model_held_out() -> set[str]:
    """Image stems the shipped default model held out (its config's ``extra.held_out``)."""
    from ..models.registry import shipped_models

    p = shipped_models().get("default")
    if p is None:
        return set()
    ho = json.loads(p.read_text()).get("extra", {}).get("held_out", {})
    return {s for v in ho.values() for s in v}


def negative_crops(data_dir: Path, size: int, mpp: float, per_image: int = 120, seed: int = 0) -> CropSet:
    """Nucleus-centred crops of labelled nuclei (at most ``per_image`` per image, random), from
    ``NEGATIVE_FOLDERS``; held out = the default model's held-out images and NuCLS ``test_*``."""
    from ..data.readers import read_folder

    rng = np.random.default_rng(seed)
    ho_names = default_model_held_out()
    xs, grp, ds, ho = [], [], [], []
    for folder, dmpp in NEGATIVE_FOLDERS:
        root = data_dir / folder
        if not root.is_dir():
            raise InputError(f"mitosis negatives: folder not found: {root}")
        for ref in read_folder(root, default_mpp=dmpp, classes=False):
            rgb, inst, _ = ref.load()
            s = ref.mpp / mpp
            rgb_w = _resample(rgb, s)
            ids, cy, cx = _centroids(inst)
            if not len(ids):
                continue
            c = np.stack([cx, cy], 1) * s
            keep = np.flatnonzero(inside(rgb_w.shape, c, size))
            if len(keep) > per_image:
                keep = rng.choice(keep, per_image, replace=False)
            stem = ref.name.split("/", 1)[1]
            xs.append(centred_windows(rgb_w, c[keep], size))
            grp += [ref.name] * len(keep)
            ds += [folder] * len(keep)
            ho += [stem in ho_names or (folder == "nucls-sample" and stem.startswith("test_"))] * len(keep)
    x = np.concatenate(xs)
    n = len(x)
    return CropSet(x, np.zeros(n, np.uint8), np.full(n, -1, np.int8), np.array(grp), np.array(ds), np.array(ho), mpp)


def _centroids(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, cy, cx) of the instances, pixel-corner convention (+0.5)."""
    m = inst > 0
    lab = inst[m].astype(np.int64)
    if lab.size == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    yy, xx = np.nonzero(m)
    n = int(lab.max()) + 1
    cnt = np.bincount(lab, minlength=n).astype(np.float64)
    ids = np.flatnonzero(cnt > 0)
    cy = np.bincount(lab, weights=yy, minlength=n)[ids] / cnt[ids] + 0.5
    cx = np.bincount(lab, weights=xx, minlength=n)[ids] / cnt[ids] + 0.5
    return ids, cy, cx


def build_crop_set(data_dir: Path, size: int, mpp: float, *, per_image: int = 120, held_out_fraction: float = 0.2,
                   seed: int = 0, cache: Path | None = None) -> CropSet:
    """Positives + negatives (cached as ``cache`` .npz when given)."""
    if cache is not None and cache.is_file():
        cs = CropSet.load(cache)
        if cs.x.shape[1] == size and abs(cs.mpp - mpp) < 1e-9:
            return cs
    pos = positive_crops(data_dir / "mitoses-amibr", size, mpp, held_out_fraction=held_out_fraction, seed=seed)
    neg = negative_crops(data_dir, size, mpp, per_image=per_image, seed=seed)
    cs = CropSet(np.concatenate([pos.x, neg.x]), np.concatenate([pos.mitotic, neg.mitotic]),
                 np.concatenate([pos.atypical, neg.atypical]), np.concatenate([pos.group, neg.group]),
                 np.concatenate([pos.dataset, neg.dataset]), np.concatenate([pos.held_out, neg.held_out]), mpp)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cs.save(cache)
    return cs
