"""Real inputs for narrative evaluation: TME feature sets read from reports or human label maps.

:func:`load_inputs` accepts

* a TME report (``tme.json`` of ``segtme analyze`` / ``segtme tme``, schema
  ``segtme.tme-report/1``) or a directory of them (``*.json`` and ``*/tme.json``);
* a dataset directory with ``index.json`` whose items have ``inst`` + ``type_map`` (CoNSeP as in
  ``../shared/data/consep-train``: human instance + class maps, taxonomy ``consep4``, MPP per item);
* a dataset directory with ``index.json`` items with ``label``/``inst`` but no class map
  (MoNuSeg) or with ``labels/*_inst.png`` (GBM/TCGA tiles): human instance maps with one fixed
  class for every nucleus (``SourceOptions.fixed_class`` of ``pannuke6``, default 1 = Neoplastic);
* a data root holding such directories (e.g. ``../shared/data``): each one that is recognised.

Features come from :func:`segtme.tme.features.analyze_tme_from_maps` (px of the maps; µm twins
when the MPP is known). ``SourceOptions.tiles = k`` also yields the nuclei of each tile of a k x k grid over every image
as separate regions (like annotations drawn on the image); ``drop_mpp_every = m`` drops the MPP of every m-th region (px-only narratives).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError

__all__ = ["ReportInput", "SourceOptions", "load_inputs", "real_corpus", "to_bio", "CORPUS"]


@dataclass(frozen=True)
class ReportInput:
    """One region: its TME feature dict (``analyze_tme_*`` output), taxonomy and where it came from."""

    name: str
    features: dict = field(repr=False)
    taxonomy: str


@dataclass(frozen=True)
class SourceOptions:
    limit: int | None = None  # at most this many regions in total
    images_per_dataset: int | None = None  # at most this many images from each label-map dataset
    tiles: int = 1  # also yield the tiles x tiles crops of every image (1: whole images only)
    drop_mpp_every: int = 0  # 0: keep MPPs; m: every m-th region is analysed without MPP
    fixed_class: int = 1  # pannuke6 class for datasets without class maps (1 = Neoplastic)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be >= 1, got {self.limit}")
        if self.tiles < 1:
            raise InputError(f"tiles must be >= 1, got {self.tiles}")
        if not 1 <= self.fixed_class <= 5:
            raise InputError(f"fixed_class must be a pannuke6 nucleus class 1-5, got {self.fixed_class}")


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _tiles(table, shape: tuple[int, int], k: int):
    """('', whole table), then ('[i,j]', nuclei whose centroid lies in tile (i, j) of a k x k grid)."""
    yield "", table
    if k > 1:
        h, w = shape
        x, y = table.centroid[:, 0], table.centroid[:, 1]
        for i in range(k):
            for j in range(k):
                sel = (y >= i * h / k) & (y < (i + 1) * h / k) & (x >= j * w / k) & (x < (j + 1) * w / k)
                yield f"[{i},{j}]", table.subset(sel)


def _is_report(d: Any) -> bool:
    return isinstance(d, dict) and isinstance(d.get("raw_data"), dict) and "interpretation" in d


def _reports(paths: list[Path]) -> Iterator[ReportInput]:
    for p in paths:
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read TME report {p}: {e}") from None
        if not _is_report(d):
            raise InputError(f"{p} is not a TME report (no raw_data/interpretation)")
        raw = {k: v for k, v in d["raw_data"].items() if k != "indeterminate"}
        yield ReportInput(str(p), raw, str(d.get("taxonomy") or "pannuke6"))


def _label_items(root: Path) -> tuple[str, list[dict]] | None:
    """('classed' | 'fixed', items with 'inst', optional 'type_map', 'mpp') of a dataset dir."""
    idx = root / "index.json"
    if idx.is_file():
        try:
            d = json.loads(idx.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read dataset index {idx}: {e}") from None
        items = d["items"] if isinstance(d, dict) and "items" in d else d
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            return None
        if all("inst" in it and "type_map" in it for it in items):
            return "classed", [{"inst": it["inst"], "type_map": it["type_map"], "mpp": it.get("mpp")} for it in items]
        if all(("label" in it or "inst" in it) for it in items):
            return "fixed", [{"inst": it.get("label") or it["inst"], "mpp": it.get("mpp")} for it in items]
        return None
    labels = sorted((root / "labels").glob("*_inst.png")) if (root / "labels").is_dir() else []
    if labels:
        return "fixed", [{"inst": str(p.relative_to(root)), "mpp": None} for p in labels]
    return None


def _from_maps(root: Path, kind: str, items: list[dict], opts: SourceOptions, counter: list[int]) -> Iterator[ReportInput]:
    import dataclasses

    from ..tme.features import analyze_tme_from_nuclei, nuclei_table_from_maps

    for it in items[: opts.images_per_dataset]:
        inst = _read_png(root / it["inst"]).astype(np.int64)
        if kind == "classed":
            cls = _read_png(root / it["type_map"]).astype(np.int64)
            tax = "consep4"
        else:
            cls = np.where(inst > 0, opts.fixed_class, 0)
            tax = "pannuke6"
        mpp = None if it.get("mpp") in (None, "") else float(it["mpp"])
        table = nuclei_table_from_maps(inst, cls, mpp=mpp, taxonomy=tax)
        for suffix, sub in _tiles(table, inst.shape[:2], opts.tiles):
            counter[0] += 1
            drop = bool(opts.drop_mpp_every and counter[0] % opts.drop_mpp_every == 0)
            if drop:
                sub = dataclasses.replace(sub, mpp=None)
            feats = analyze_tme_from_nuclei(sub)
            yield ReportInput(f"{root.name}/{Path(it['inst']).name}{suffix}{' (no mpp)' if drop or mpp is None else ''}",
                              feats, tax)


def load_inputs(path: str | Path, options: SourceOptions = SourceOptions()) -> list[ReportInput]:
    """Regions of ``path`` (see module docstring); InputError if nothing usable is there."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"narrative data not found: {p}")
    out: list[ReportInput] = []
    counter = [0]

    def take(it: Iterator[ReportInput]) -> bool:
        for x in it:
            out.append(x)
            if options.limit is not None and len(out) >= options.limit:
                return True
        return False

    if p.is_file():
        take(_reports([p]))
    else:
        reports = sorted(p.glob("*.json")) + sorted(p.glob("*/tme.json"))
        reports = [r for r in reports if r.name != "index.json"]
        dirs = [p] + sorted(d for d in p.iterdir() if d.is_dir())
        full = False
        if reports:
            full = take(_reports(reports))
        for d in dirs:
            if full:
                break
            found = _label_items(d)
            if found is not None:
                full = take(_from_maps(d, found[0], found[1], options, counter))
    if not out:
        raise InputError(f"no TME reports or label-map datasets found in {p} (expected tme.json reports, or a dataset "
                         f"dir with index.json / labels/*_inst.png)")
    return out


#: the real-image corpus of the adversarial evaluation: (dataset dir, options); "small" for the test suite
CORPUS: dict[str, tuple[tuple[str, SourceOptions], ...]] = {
    "full": (("consep-train", SourceOptions(tiles=2, drop_mpp_every=3)),
             ("monuseg-train", SourceOptions(drop_mpp_every=2)),
             ("gbm-tcga-tiles", SourceOptions())),
    "small": (("consep-train", SourceOptions(tiles=2, drop_mpp_every=3, images_per_dataset=9)),
              ("monuseg-train", SourceOptions(drop_mpp_every=2, images_per_dataset=3)),
              ("gbm-tcga-tiles", SourceOptions(images_per_dataset=6))),
}


def real_corpus(data_dir: str | Path, size: str = "full") -> list[ReportInput]:
    """The adversarial corpus from ``data_dir`` (``../shared/data``): CoNSeP (human class maps; whole
    images + 2 x 2 tiles, every third region without MPP), MoNuSeg and GBM/TCGA (human instance maps,
    every nucleus class 1 = Neoplastic of pannuke6: the class is not annotated)."""
    if size not in CORPUS:
        raise InputError(f"corpus size must be one of {sorted(CORPUS)}, got {size!r}")
    out: list[ReportInput] = []
    for name, opts in CORPUS[size]:
        out += load_inputs(Path(data_dir) / name, opts)
    return out


def to_bio(x: ReportInput) -> tuple[str, dict, list[str]]:
    """(name, translate_tme_to_bio_tokens result, taxonomy substitution sentences) of an input."""
    from ..taxonomy import get_taxonomy
    from ..tme.tokens import translate_tme_to_bio_tokens

    tax = get_taxonomy(x.taxonomy)
    return x.name, translate_tme_to_bio_tokens(x.features, taxonomy=tax.name), tax.substitutions()
