"""The ``[[data]]`` part of a training config and the train / held-out split it defines, shared by
the trainer (``train/``) and the evaluator (``eval/``), which must not import each other's
internals (issue #14: no cycles). ``read_config_file`` parses TOML / YAML / JSON.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .readers import read_dataset
from .sample import SampleRef


@dataclass
class DataSpec:
    path: str
    kind: str = "folder"
    name: str | None = None
    mpp: float | None = None
    default_mpp: float | None = None
    classes: bool = True
    class_map: dict[int, int] | None = None
    split: str | None = None
    repeat: Any = "auto"
    use: str = "train"
    val: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    exclude: list[str] = field(default_factory=list)
    scales: list[int] | None = None
    images_root: str | None = None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (.toml) or YAML (.yaml/.yml) file (JSON also accepted) into a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        if path.suffix == ".json":
            return json.loads(text)
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError, json errors
        raise InputError(f"cannot parse config {path}: {e}") from None
    raise InputError(f"config {path}: use a .toml, .yaml/.yml or .json file")


def data_specs_from_dicts(data: list[dict[str, Any]] | dict[str, Any] | None) -> list[DataSpec]:
    """``[[data]]`` tables -> DataSpecs (clear error for unknown keys)."""
    if isinstance(data, dict):
        data = [data]
    out = []
    for i, ds in enumerate(data or []):
        ds = dict(ds)
        if "class_map" in ds and ds["class_map"] is not None:
            ds["class_map"] = {int(k): int(v) for k, v in ds["class_map"].items()}
        known = {f.name for f in fields(DataSpec)}
        unknown = set(ds) - known
        if unknown:
            raise InputError(f"config [data #{i}]: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        try:
            out.append(DataSpec(**ds))
        except TypeError as e:
            raise InputError(f"config [data #{i}]: {e}") from None
    return out


def _matches(ref: SampleRef, names: list[str]) -> bool:
    stem = ref.name.split("/", 1)[-1]
    base = stem.rsplit("/", 1)[-1]
    return ref.name in names or stem in names or base in names


def split_refs(specs: list[DataSpec], seed: int) -> tuple[list[SampleRef], list[int | None], list[SampleRef]]:
    """(train refs, per-ref repeat (None = auto), val refs) from the ``[[data]]`` entries."""
    train, reps, val = [], [], []
    for sp in specs:
        kw: dict[str, Any] = {"name": sp.name}
        if sp.kind == "folder":
            kw.update(mpp=sp.mpp, default_mpp=sp.default_mpp, classes=sp.classes, class_map=sp.class_map, split=sp.split)
        elif sp.kind == "pannuke":
            kw.update(classes=sp.classes, class_map=sp.class_map)
            if sp.mpp:
                kw["mpp"] = sp.mpp
        elif sp.kind == "pseudo":
            kw.update(mpp=sp.mpp, images_root=sp.images_root)
        elif sp.kind == "images":  # unlabelled (KD-only data of a run with a [teacher])
            kw.update(mpp=sp.mpp)
        elif sp.kind == "tcga_ut":
            raise InputError(f"dataset {sp.path}: kind tcga_ut is unlabelled; pseudo-label it first (segtme pseudo-label)")
        refs = [r for r in read_dataset(sp.kind, sp.path, **kw) if not _matches(r, sp.exclude)]
        is_val = [_matches(r, sp.val) for r in refs]
        missing = [n for n in sp.val if not any(_matches(r, [n]) for r in refs)]
        if missing:
            raise InputError(f"dataset {sp.path}: val name(s) {missing} match no sample")
        if sp.val_fraction > 0:
            rng = np.random.default_rng(seed)
            cand = [i for i, v in enumerate(is_val) if not v]
            k = max(1, round(sp.val_fraction * len(refs))) if len(refs) > 1 else 0
            for i in rng.permutation(cand)[:k]:
                is_val[int(i)] = True
        if sp.use not in ("train", "val", "both"):
            raise InputError(f"dataset {sp.path}: use must be train, val or both, got {sp.use!r}")
        for r, v in zip(refs, is_val):
            to_val = sp.use in ("val", "both") or v
            to_train = sp.use == "both" or (sp.use == "train" and not v)
            if to_val:
                val.append(r)
            if to_train:
                train.append(r)
                reps.append(None if sp.repeat in (None, "auto") else int(sp.repeat))
    return train, reps, val
