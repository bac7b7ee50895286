"""Dataset readers: each returns a list of ``SampleRef`` (lazy) carrying its MPP.

Kinds (``kind`` in the training config):

* ``folder``   generic folder as in ``../shared/data``: ``images/*.png`` + ``labels/<stem>_inst.png``
               (uint16 instances), optional ``labels/<stem>_class.json`` ({instance id: class}) or
               ``labels/<stem>_type.png`` (per-pixel class), optional ``index.json`` (items with
               ``image``, ``label``/``inst``, ``classes``, ``type_map``, ``mpp``, ``split``).
* ``pannuke``  one PanNuke fold: ``images.npy`` (N,256,256,3), ``masks.npy`` (N,256,256,6) with
               per-class instance channels (0 neoplastic, 1 inflammatory, 2 connective, 3 dead,
               4 epithelial, 5 background), ``types.npy`` (tissue names). 0.25 µm/px.
               Channel k -> PanNuke-6 class k+1 (the ``pannuke6`` taxonomy).
* ``tcga_ut``  the TCGA-UT restructured layout: ``[scale_<s>/]<cancer type>/<patch>.(png|jpg)``;
               scale s in 0..5 has MPP 0.5 + 0.1*s. Unlabelled (for pseudo-labelling).
* ``pseudo``   pseudo-label folders: ``<stem>_sem_map.png`` (uint8 classes) beside ``<stem>.png``
               or under a separate label root, MPP from the manifest (``manifest.json``) or config.
* ``images``   any folder of images without labels (for pseudo-labelling), MPP from config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import InputError
from .sample import (
    FG_UNKNOWN,
    SampleRef,
    image_size,
    load_class_json,
    read_label,
    read_rgb,
    sem_from_instances,
)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: TCGA-UT restructured: MPP of scale s (paper Table 1)
TCGA_UT_MPP = {s: round(0.5 + 0.1 * s, 3) for s in range(6)}
PANNUKE_MPP = 0.25


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _float_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


# --------------------------------------------------------------------------- generic folder
def read_folder(
    root: str | Path,
    *,
    mpp: float | None = None,
    default_mpp: float | None = None,
    classes: bool = True,
    class_map: dict[int, int] | None = None,
    split: str | None = None,
    name: str | None = None,
) -> list[SampleRef]:
    """Generic image + instance-label folder (see module doc).

    mpp: override for every image (µm/px); otherwise per item from ``index.json``; an image
        without any MPP is an InputError (MPP matters: say it in the config).
    default_mpp: used only for items whose ``index.json`` entry has no MPP.
    classes: use per-nucleus classes when present (False: class-agnostic FG_UNKNOWN).
    class_map: dataset class id -> model class id (None: identity).
    split: keep only ``index.json`` items with this ``split`` (None: all).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    dsname = name or root.name
    items: list[dict[str, Any]] = []
    index = root / "index.json"
    if index.is_file():
        d = json.loads(index.read_text())
        raw = d["items"] if isinstance(d, dict) else d
        for it in raw:
            if split is not None and it.get("split") not in (None, split):
                continue
            lab = it.get("inst") or it.get("label")
            items.append(
                {
                    "image": root / it["image"],
                    "inst": root / lab if lab else None,
                    "classes": root / it["classes"] if it.get("classes") else None,
                    "type_map": root / it["type_map"] if it.get("type_map") else None,
                    "mpp": _float_or_none(it.get("mpp")),
                    "size": tuple(it["size"][::-1]) if isinstance(it.get("size"), list) else None,
                }
            )
    else:
        img_dir = root / "images" if (root / "images").is_dir() else root
        lab_dir = root / "labels" if (root / "labels").is_dir() else img_dir
        for p in sorted(img_dir.iterdir()):
            if not _is_image(p) or p.stem.endswith(("_inst", "_type", "_sem_map")):
                continue
            inst = lab_dir / f"{p.stem}_inst.png"
            cj = lab_dir / f"{p.stem}_class.json"
            tm = lab_dir / f"{p.stem}_type.png"
            items.append(
                {
                    "image": p,
                    "inst": inst if inst.is_file() else None,
                    "classes": cj if cj.is_file() else None,
                    "type_map": tm if tm.is_file() else None,
                    "mpp": None,
                    "size": None,
                }
            )
    if not items:
        raise InputError(f"no images found in dataset folder {root}")
    out = []
    for it in items:
        m = mpp if mpp is not None else (it["mpp"] if it["mpp"] is not None else default_mpp)
        if m is None:
            raise InputError(
                f"{it['image']}: no MPP known (no 'mpp' in index.json); set mpp (all images) or default_mpp (images without one) for dataset {dsname} in the config"
            )
        if it["inst"] is None:
            raise InputError(f"{it['image']}: no instance label found (expected labels/<stem>_inst.png)")
        has_cls = classes and (it["classes"] is not None or it["type_map"] is not None)
        out.append(
            SampleRef(
                name=f"{dsname}/{Path(it['image']).stem}",
                mpp=float(m),
                size=it["size"],
                load=_FolderLoader(it["image"], it["inst"], it["classes"] if has_cls else None,
                                   it["type_map"] if has_cls else None, class_map),
                has_instances=True,
                has_classes=has_cls,
                dataset=dsname,
            )
        )
    return out


class _FolderLoader:
    """Picklable loader (DataLoader workers) for one generic-folder item."""

    def __init__(self, image: Path, inst: Path, classes: Path | None, type_map: Path | None, class_map: dict[int, int] | None):
        self.image, self.inst, self.classes, self.type_map, self.class_map = image, inst, classes, type_map, class_map

    def size(self) -> tuple[int, int]:
        return image_size(self.image)

    def __call__(self):
        rgb = read_rgb(self.image)
        inst = read_label(self.inst)
        if inst.shape != rgb.shape[:2]:
            raise InputError(f"{self.inst}: label shape {inst.shape} != image shape {rgb.shape[:2]}")
        sem = None
        if self.classes is not None:
            sem = sem_from_instances(inst, load_class_json(self.classes), self.class_map)
        elif self.type_map is not None:
            # per-instance majority of the type map (labels may disagree at borders)
            t = read_label(self.type_map)
            m = inst > 0
            n = int(inst.max())
            ic = {}
            if n:
                nc = int(t.max()) + 1
                counts = np.bincount(inst[m] * nc + t[m], minlength=(n + 1) * nc).reshape(n + 1, nc)
                counts[:, 0] = 0
                for i in np.nonzero(counts.sum(1))[0]:
                    ic[int(i)] = int(counts[i].argmax())
            sem = sem_from_instances(inst, ic, self.class_map)
        return rgb, inst, sem


# --------------------------------------------------------------------------- PanNuke
def read_pannuke_fold(root: str | Path, *, mpp: float = PANNUKE_MPP, classes: bool = True,
                      class_map: dict[int, int] | None = None, name: str | None = None) -> list[SampleRef]:
    """One PanNuke fold folder (``images.npy``, ``masks.npy``, optional ``types.npy``).

    Arrays are memory-mapped; each sample decodes its own slice. masks channel k (k<5) holds the
    instance ids of class k+1; channel 5 (background) is ignored.
    """
    root = Path(root)
    ip, mp = _find(root, "images.npy"), _find(root, "masks.npy")
    tp = next(iter(root.rglob("types.npy")), None)
    images = np.load(ip, mmap_mode="r")
    masks = np.load(mp, mmap_mode="r")
    if images.ndim != 4 or masks.ndim != 4 or images.shape[0] != masks.shape[0] or masks.shape[-1] < 5:
        raise InputError(f"{root}: unexpected PanNuke shapes images {images.shape} masks {masks.shape}")
    types = np.load(tp, allow_pickle=False) if tp is not None else None
    dsname = name or root.name
    return [
        SampleRef(
            name=f"{dsname}/{i:05d}",
            mpp=float(mpp),
            size=(int(images.shape[2]), int(images.shape[1])),
            load=_PanNukeLoader(str(ip), str(mp), i, classes, class_map),
            has_instances=True,
            has_classes=classes,
            dataset=dsname,
            meta={"tissue": str(types[i])} if types is not None else {},
        )
        for i in range(images.shape[0])
    ]


def _find(root: Path, fname: str) -> Path:
    p = root / fname
    if p.is_file():
        return p
    hits = sorted(root.rglob(fname))
    if not hits:
        raise InputError(f"PanNuke fold {root}: {fname} not found")
    return hits[0]


def pannuke_instances(mask: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """(inst int32, {instance id: pannuke6 class}) from one PanNuke mask (H, W, 6).

    Instance ids are unique within a class channel only; they are renumbered 1..N over all
    channels (a pixel claimed by two channels keeps the later channel)."""
    h, w = mask.shape[:2]
    inst = np.zeros((h, w), np.int32)
    cls: dict[int, int] = {}
    nxt = 1
    for k in range(5):
        ch = np.asarray(mask[..., k]).astype(np.int64)
        ids = np.unique(ch)
        ids = ids[ids > 0]
        for v in ids:
            inst[ch == v] = nxt
            cls[nxt] = k + 1
            nxt += 1
    return inst, cls


class _PanNukeLoader:
    def __init__(self, ip: str, mp: str, i: int, classes: bool, class_map: dict[int, int] | None):
        self.ip, self.mp, self.i, self.classes, self.class_map = ip, mp, i, classes, class_map

    def __call__(self):
        img = np.asarray(np.load(self.ip, mmap_mode="r")[self.i])
        if img.dtype != np.uint8:
            img = np.clip(img, 0, 255).astype(np.uint8)
        inst, cls = pannuke_instances(np.load(self.mp, mmap_mode="r")[self.i])
        sem = sem_from_instances(inst, cls if self.classes else None, self.class_map)
        return img, inst, sem


# --------------------------------------------------------------------------- TCGA-UT, images, pseudo
_SCALE_RE = re.compile(r"(?:^|[_-])(?:scale)?[_-]?([0-5])$", re.IGNORECASE)


def _scale_of(dirname: str) -> int | None:
    m = _SCALE_RE.search(dirname)
    return int(m.group(1)) if m else None


def read_tcga_ut(root: str | Path, *, scales: Iterable[int] | None = None, name: str | None = None) -> list[SampleRef]:
    """TCGA-UT restructured: ``root/<scale dir>/<cancer type>/<patch>`` where the scale directory
    name ends in its number (``0``, ``scale_0``, ``scale0``, ``s_0``…); MPP = 0.5 + 0.1*scale.
    A root without scale directories is treated as scale 0. Unlabelled samples."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"TCGA-UT folder not found: {root}")
    want = set(scales) if scales is not None else None
    dsname = name or root.name
    scale_dirs = [(d, _scale_of(d.name)) for d in sorted(root.iterdir()) if d.is_dir()]
    scale_dirs = [(d, s) for d, s in scale_dirs if s is not None]
    if not scale_dirs:
        scale_dirs = [(root, 0)]
    out = []
    for d, s in scale_dirs:
        if want is not None and s not in want:
            continue
        for p in sorted(d.rglob("*")):
            if _is_image(p) and not p.stem.endswith("_sem_map"):
                rel = p.relative_to(root).with_suffix("")
                out.append(SampleRef(name=f"{dsname}/{rel.as_posix()}", mpp=TCGA_UT_MPP[s], load=_ImageLoader(p),
                                     has_instances=False, has_classes=False, dataset=dsname,
                                     meta={"scale": s, "cancer_type": p.parent.name, "path": str(p)}))
    return out


def read_images(root: str | Path, *, mpp: float, name: str | None = None) -> list[SampleRef]:
    """Any folder of images (recursive), unlabelled, one MPP for all."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    dsname = name or root.name
    return [
        SampleRef(name=f"{dsname}/{p.relative_to(root).with_suffix('').as_posix()}", mpp=float(mpp), load=_ImageLoader(p),
                  has_instances=False, has_classes=False, dataset=dsname, meta={"path": str(p)})
        for p in sorted(root.rglob("*"))
        if _is_image(p) and not p.stem.endswith(("_sem_map", "_inst", "_type"))
    ]


class _ImageLoader:
    def __init__(self, p: Path):
        self.p = p

    def size(self) -> tuple[int, int]:
        return image_size(self.p)

    def __call__(self):
        return read_rgb(self.p), None, None


def read_pseudo(root: str | Path, *, mpp: float | None = None, images_root: str | Path | None = None,
                name: str | None = None) -> list[SampleRef]:
    """Pseudo-label folder written by ``segtme pseudo-label``: ``manifest.json`` lists accepted
    patches (``image`` absolute or relative path, ``sem_map`` relative to root, ``mpp``).
    Without a manifest: every ``<stem>_sem_map.png`` with ``<stem>.<ext>`` beside it (or under
    ``images_root`` at the same relative path). Semantic-only labels: HV targets are the paper's
    dynamic synthesis."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"pseudo-label folder not found: {root}")
    dsname = name or root.name
    pairs: list[tuple[Path, Path, float | None]] = []
    man = root / "manifest.json"
    if man.is_file():
        d = json.loads(man.read_text())
        for it in d["accepted"]:
            img = Path(it["image"])
            if not img.is_absolute():
                img = root / img
            pairs.append((img, root / it["sem_map"], _float_or_none(it.get("mpp"))))
    else:
        for sm in sorted(root.rglob("*_sem_map.png")):
            stem = sm.name[: -len("_sem_map.png")]
            base = (Path(images_root) / sm.parent.relative_to(root)) if images_root else sm.parent
            img = next((base / f"{stem}{e}" for e in IMAGE_EXTS if (base / f"{stem}{e}").is_file()), None)
            if img is None:
                raise InputError(f"pseudo-label {sm}: no image {stem}.* beside it")
            pairs.append((img, sm, None))
    out = []
    for img, sm, m in pairs:
        mm = mpp if mpp is not None else m
        if mm is None:
            raise InputError(f"pseudo-label {sm}: no MPP (set mpp for dataset {dsname})")
        out.append(SampleRef(name=f"{dsname}/{sm.relative_to(root).as_posix()[:-len('_sem_map.png')]}", mpp=float(mm),
                             load=_PseudoLoader(img, sm), has_instances=False, has_classes=True, dataset=dsname))
    return out


class _PseudoLoader:
    def __init__(self, img: Path, sm: Path):
        self.img, self.sm = img, sm

    def size(self) -> tuple[int, int]:
        return image_size(self.img)

    def __call__(self):
        rgb = read_rgb(self.img)
        sem = read_label(self.sm).astype(np.uint8)
        if sem.shape != rgb.shape[:2]:
            raise InputError(f"{self.sm}: shape {sem.shape} != image {rgb.shape[:2]}")
        return rgb, None, sem


# --------------------------------------------------------------------------- dispatch
KINDS = ("folder", "pannuke", "tcga_ut", "pseudo", "images")


def read_dataset(kind: str, path: str | Path, **kw: Any) -> list[SampleRef]:
    """Dispatch on ``kind`` (see module doc); ``kw`` are the reader's options."""
    kw = {k: v for k, v in kw.items() if v is not None}
    if kind == "folder":
        return read_folder(path, **kw)
    if kind == "pannuke":
        return read_pannuke_fold(path, **kw)
    if kind == "tcga_ut":
        return read_tcga_ut(path, **kw)
    if kind == "pseudo":
        return read_pseudo(path, **kw)
    if kind == "images":
        if "mpp" not in kw:
            raise InputError(f"dataset {path}: kind 'images' needs mpp")
        return read_images(path, **kw)
    raise InputError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")


__all__ = ["read_dataset", "read_folder", "read_pannuke_fold", "read_tcga_ut", "read_pseudo", "read_images",
           "pannuke_instances", "TCGA_UT_MPP", "KINDS", "FG_UNKNOWN"]
