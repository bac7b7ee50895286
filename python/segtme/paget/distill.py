"""PAGET distillation: aggregated teacher labels -> the SegFormer student, trained with the shared
trainer (``segtme.train.trainer.Trainer``; no second training loop here).

One config file (TOML/YAML/JSON) = the shared trainer's sections (``[run]``, ``[model]``,
``[optim]``, ``[loss]``, ``[augment]``) + a ``[distill]`` section::

    [distill]
    labels_dir = "runs/paget/labels"     # aggregated labels are written here
    method = "hierarchical"               # or "flat" (ablation)
    crop = 0                              # >0: keep only the top-left crop x crop px (tests)
    overwrite = false                     # false: reuse labels already in labels_dir
    [distill.images]                      # or several: [[distill.images]] (one per folder)
    path = "../shared/data/consep-train/images"   glob = "train_*.png"   mpp = 0.25   limit = 0
    # default_mpp = 0.25 (MPP per image from index.json, this when missing); prefix = "consep_"
    # (key prefix); val = ["train_3"] / val_from = "default" (held-out images: not trained on)
    [distill.instances]                   # the instance source (HoverNet's role in the paper)
    kind = "stored"                       # stored | model
    root = "../shared/data/consep-train/labels"
    inst_pattern = "{key}_inst.png"       classes_pattern = "{key}_class.json"   classes_taxonomy = "consep4"
    # kind = "model", model = "default" (any SegTME model spec), allow_random = false
    [[distill.teachers]]                  # any number; kinds: rule | stored | plugin
    kind = "rule"     rule = "tissue_density"            # + the rule's parameters
    [[distill.teachers]]
    kind = "stored"   name = "cd45"   root = "teachers/"   classes = ["Leukocyte"]
                      pattern = "{key}.{name}.npy"   map_kind = "logits"   # logits | prob | mask
    [[distill.teachers]]
    kind = "plugin"   factory = "my_pkg.teachers:make_cd3_teacher"   # returns a Teacher; + kwargs
    [distill.mitoses]                     # optional: kind = "stored" (JSON points) | "model"
                                          # (the mitosis teacher, model = "mitosis") | "plugin"
    [distill.aggregation]                 # AggregationParams fields (sigma_px, mitosis_radius_px, ...)

Labels: ``<labels_dir>/<key>_sem_map.png`` (uint8 PAGET ids, 255 = unresolved / ignored) and a
``manifest.json`` in the shared trainer's ``pseudo`` dataset format, so the trainer reads them as
``[[data]] kind = "pseudo"`` (added automatically unless the config has its own ``[[data]]``).
Labels stay at the images' own resolution (the paper's teachers run at 40x); the trainer
rescales image and labels (nearest) to the student's 0.5 µm/px.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from ..export.atomic import atomic_write, atomic_write_text
from . import aggregate as ag
from .teachers import (
    InstanceSource,
    MitosisDetector,
    ModelInstanceSource,
    StoredInstanceSource,
    StoredMapTeacher,
    StoredMitoses,
    Teacher,
    TeacherInput,
    run_teachers,
)

log = logging.getLogger(__name__)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class DistillSpec:
    labels_dir: str
    images: dict[str, Any] | list[dict[str, Any]]
    instances: dict[str, Any]
    teachers: list[dict[str, Any]] = field(default_factory=list)
    mitoses: dict[str, Any] | None = None
    aggregation: dict[str, Any] = field(default_factory=dict)
    method: str = "hierarchical"
    crop: int = 0
    overwrite: bool = False


def parse_distill_section(d: Mapping[str, Any]) -> DistillSpec:
    known = {f.name for f in fields(DistillSpec)}
    bad = set(d) - known
    if bad:
        raise InputError(f"[distill]: unknown key(s) {sorted(bad)}; known: {sorted(known)}")
    for req in ("labels_dir", "images", "instances"):
        if req not in d:
            raise InputError(f"[distill]: missing {req!r}")
    spec = DistillSpec(**dict(d))
    if spec.method not in ("hierarchical", "flat"):
        raise InputError(f"[distill]: method must be 'hierarchical' or 'flat', got {spec.method!r}")
    try:
        ag.AggregationParams(**spec.aggregation)
    except (TypeError, ValueError) as e:
        raise InputError(f"[distill.aggregation]: {e}") from None
    return spec


def _plugin(factory: str, kwargs: Mapping[str, Any]) -> Any:
    if ":" not in factory:
        raise InputError(f"plugin factory must be 'module:callable', got {factory!r}")
    mod, attr = factory.split(":", 1)
    try:
        return getattr(importlib.import_module(mod), attr)(**kwargs)
    except (ImportError, AttributeError) as e:
        raise InputError(f"cannot load plugin {factory!r}: {e}") from None


def build_teacher(d: Mapping[str, Any]) -> Teacher:
    d = dict(d)
    kind = d.pop("kind", None)
    if kind == "rule":
        from .rule_teachers import RULE_TEACHERS

        rule = d.pop("rule", None)
        if rule not in RULE_TEACHERS:
            raise InputError(f"rule teacher {rule!r} unknown; known: {sorted(RULE_TEACHERS)}")
        return RULE_TEACHERS[rule](**d)
    if kind == "stored":
        try:
            return StoredMapTeacher(name=d.pop("name"), root=d.pop("root"), classes=tuple(d.pop("classes")),
                                    pattern=d.pop("pattern", "{key}.{name}.npy"), kind=d.pop("map_kind", "logits"))
        except KeyError as e:
            raise InputError(f"stored teacher needs {e.args[0]!r}") from None
    if kind == "plugin":
        t = _plugin(d.pop("factory", ""), d)
        if not isinstance(t, Teacher):
            raise InputError(f"plugin teacher {t!r} does not implement the Teacher protocol (name, classes, predict)")
        return t
    raise InputError(f"teacher kind must be rule, stored or plugin, got {kind!r}")


def build_instance_source(d: Mapping[str, Any]) -> InstanceSource:
    d = dict(d)
    kind = d.pop("kind", "stored")
    if kind == "stored":
        if "root" not in d:
            raise InputError("[distill.instances] kind = 'stored' needs root")
        return StoredInstanceSource(**d)
    if kind == "model":
        return ModelInstanceSource(model=d.pop("model", "default"), allow_random=bool(d.pop("allow_random", False)),
                                   device=d.pop("device", "auto"))
    if kind == "plugin":
        return _plugin(d.pop("factory", ""), d)
    raise InputError(f"[distill.instances]: kind must be stored, model or plugin, got {kind!r}")


def build_mitosis_detector(d: Mapping[str, Any] | None) -> MitosisDetector | None:
    if not d:
        return None
    d = dict(d)
    kind = d.pop("kind", "stored")
    if kind == "stored":
        return StoredMitoses(**d)
    if kind == "model":  # the mitosis teacher (segtme.mitosis) on the instance source's nuclei
        from ..mitosis.detect import MitosisTeacher

        return MitosisTeacher(model=d.pop("model", "mitosis"), threshold=d.pop("threshold", None),
                              device=d.pop("device", "cpu"))
    if kind == "plugin":
        return _plugin(d.pop("factory", ""), d)
    raise InputError(f"[distill.mitoses]: kind must be stored, model or plugin, got {kind!r}")


def _index_mpp(root: Path) -> dict[str, float]:
    """{image stem: mpp} from the folder's (or its parent's) ``index.json``, when it has one."""
    for idx in (root / "index.json", root.parent / "index.json"):
        if idx.is_file():
            d = json.loads(idx.read_text())
            items = d.get("items", []) if isinstance(d, dict) else d
            out = {}
            for it in items:
                try:
                    out[Path(it["image"]).stem] = float(it["mpp"])
                except (KeyError, TypeError, ValueError):
                    continue
            return out
    return {}


def _image_specs(images: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(images, Mapping):
        return [images]
    if isinstance(images, list) and images and all(isinstance(i, Mapping) for i in images):
        return list(images)
    raise InputError("[distill.images] must be a table or a non-empty array of tables ([[distill.images]])")


IMAGE_SPEC_KEYS = {"path", "glob", "mpp", "default_mpp", "limit", "prefix", "val", "val_from"}


def held_out_names(spec: Mapping[str, Any]) -> set[str]:
    """Image stems held out for validation by one images spec: ``val`` (list of stems) and/or
    ``val_from = "default"`` (the images the shipped default model held out, its config's
    ``extra.held_out``), so the student is validated on images no nucleus teacher trained on."""
    names = {str(v) for v in spec.get("val", [])}
    vf = spec.get("val_from")
    if vf == "default":
        from ..models.registry import shipped_models

        p = shipped_models().get("default")
        if p is None:
            raise InputError("[distill.images] val_from = 'default' but no default model is shipped")
        ho = json.loads(p.read_text()).get("extra", {}).get("held_out", {})
        names |= {s for v in ho.values() for s in v}
    elif vf is not None:
        raise InputError(f"[distill.images] val_from must be 'default', got {vf!r}")
    return names


def list_images(images: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[tuple[str, Path, float]]:
    """(key, path, mpp) for the distillation images of one or several image specs (each sorted;
    ``limit`` > 0 keeps the first ones). key = ``prefix`` + file stem. MPP: ``mpp`` (all images),
    else the folder's ``index.json``, else ``default_mpp``."""
    out: list[tuple[str, Path, float]] = []
    for images in _image_specs(images):
        bad = set(images) - IMAGE_SPEC_KEYS
        if bad:
            raise InputError(f"[distill.images]: unknown key(s) {sorted(bad)}; known: {sorted(IMAGE_SPEC_KEYS)}")
        root = Path(images.get("path", ""))
        if not root.is_dir():
            raise InputError(f"[distill.images]: folder not found: {root}")
        if "mpp" not in images and "default_mpp" not in images:
            raise InputError(f"[distill.images] {root}: mpp or default_mpp (µm/px of the images) is required")
        paths = sorted(p for p in root.glob(str(images.get("glob", "*"))) if p.suffix.lower() in IMAGE_EXTS)
        lim = int(images.get("limit", 0) or 0)
        if lim > 0:
            paths = paths[:lim]
        if not paths:
            raise InputError(f"[distill.images]: no images in {root} matching {images.get('glob', '*')!r}")
        idx = {} if "mpp" in images else _index_mpp(root)
        prefix = str(images.get("prefix", ""))
        for p in paths:
            m = float(images["mpp"]) if "mpp" in images else float(idx.get(p.stem, images["default_mpp"]))
            out.append((prefix + p.stem, p.resolve(), m))
    keys = [k for k, _, _ in out]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise InputError(f"[distill.images]: duplicate image keys {dup[:5]}; set a different prefix per folder")
    return out


def val_keys(images: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[str]:
    """Keys of the held-out (validation) images of the image specs."""
    out = []
    for spec in _image_specs(images):
        names = held_out_names(spec)
        if not names:
            continue
        out += [k for k, p, _ in list_images(spec) if p.stem in names]
    return out


def aggregate_image(
    rgb: np.ndarray,
    mpp: float,
    key: str,
    teachers: list[Teacher],
    instance_source: InstanceSource,
    mitosis_detector: MitosisDetector | None = None,
    *,
    method: str = "hierarchical",
    params: ag.AggregationParams = ag.AggregationParams(),
) -> ag.AggregationResult:
    """Run the plug-ins on one image and aggregate their outputs (see ``aggregate``)."""
    image = TeacherInput(rgb, mpp, key)
    inst_out = instance_source.instances(image)
    inst = ag.relabel_sequential(np.asarray(inst_out.inst))
    image.inst = inst
    logits = run_teachers(teachers, image)
    baseline = inst_out.baseline(inst)
    mit = mitosis_detector.detect(image) if mitosis_detector is not None else None
    return ag.aggregate(method, rgb=rgb, inst=inst, logits=logits, baseline=baseline, mitoses_xy=mit, params=params)


def build_labels(spec: DistillSpec) -> Path:
    """Aggregate teacher outputs for every image and write the label folder; returns its path."""
    from PIL import Image

    from ..data.sample import read_rgb

    out = Path(spec.labels_dir)
    out.mkdir(parents=True, exist_ok=True)
    teachers = [build_teacher(t) for t in spec.teachers]
    src = build_instance_source(spec.instances)
    mit = build_mitosis_detector(spec.mitoses)
    params = ag.AggregationParams(**spec.aggregation)
    accepted, stats = [], {}
    old_stats: dict[str, Any] = {}
    if (out / "manifest.json").is_file() and not spec.overwrite:  # keep the stats of reused labels
        try:
            old_stats = dict(json.loads((out / "manifest.json").read_text()).get("stats", {}))
        except (OSError, ValueError):
            old_stats = {}
    for key, path, mpp in list_images(spec.images):
        sem_name = f"{key}_sem_map.png"
        img_name = f"{key}{path.suffix}" if spec.crop else None
        if not spec.overwrite and (out / sem_name).is_file() and (img_name is None or (out / img_name).is_file()):
            log.info("labels for %s exist; reusing (overwrite = false)", key)
            if key in old_stats:
                stats[key] = old_stats[key]
        else:
            rgb = read_rgb(path)
            res = aggregate_image(rgb, mpp, key, teachers, src, mit, method=spec.method, params=params)
            lab = res.label
            if spec.crop:
                c = int(spec.crop)
                lab, rgb = lab[:c, :c], rgb[:c, :c]
                with atomic_write(out / img_name) as tmp:
                    Image.fromarray(np.ascontiguousarray(rgb)).save(tmp)
            with atomic_write(out / sem_name) as tmp:
                Image.fromarray(np.ascontiguousarray(lab.astype(np.uint8))).save(tmp)
            stats[key] = res.stats
        accepted.append({"image": str((out / img_name).resolve()) if img_name else str(path),
                         "sem_map": sem_name, "mpp": mpp, "key": key})
    manifest = {"kind": "paget-aggregated-labels", "method": spec.method, "aggregation": dict(spec.aggregation),
                "teachers": [t.name for t in teachers], "instance_source": getattr(src, "name", type(src).__name__),
                "accepted": accepted, "stats": stats}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, default=str))
    return out


#: the paper's training settings (section 3.6) applied where the config does not say otherwise
PAPER_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "optim": {"lr": 6e-5, "betas": [0.9, 0.999], "weight_decay": 0.01, "schedule": "poly", "warmup_steps": 1500},
    "loss": {"name": "ce"},
    "run": {"batch_size": 4, "max_steps": 48000, "metric": "miou"},
    "model": {"preset": "paget_s"},
}


@dataclass(frozen=True)
class ClassWeightOptions:
    """``[loss] class_weights = "auto"``: per-class CE weights from the training labels.

    power: w_c = f_c^-power (0.5 = inverse square root of the pixel frequency f_c);
    cap: largest weight after normalisation; working_mpp: µm/px the trainer works at (each
    image's pixel counts are scaled by (its MPP / working_mpp)², i.e. counted in working px)."""

    power: float = 0.5
    cap: float = 10.0
    working_mpp: float = 0.5


def label_pixel_counts(labels_dir: str | Path, keys: set[str] | None, num_classes: int,
                       working_mpp: float = 0.5) -> np.ndarray:
    """(num_classes,) float pixel counts of each PAGET id over the label maps of ``keys`` (None =
    every image of the manifest), in working px (counts x (image MPP / working_mpp)²); 255
    (unresolved) and ids ≥ num_classes are not counted."""
    from ..data.sample import read_label

    root = Path(labels_dir)
    man = json.loads((root / "manifest.json").read_text())
    counts = np.zeros(num_classes, np.float64)
    for it in man["accepted"]:
        if keys is not None and it["key"] not in keys:
            continue
        lab = np.asarray(read_label(root / it["sem_map"])).astype(np.int64).ravel()
        c = np.bincount(lab[lab < num_classes], minlength=num_classes)[:num_classes]
        counts += c * (float(it["mpp"]) / float(working_mpp)) ** 2
    return counts


def class_weights_from_counts(counts: np.ndarray, opts: ClassWeightOptions = ClassWeightOptions()) -> np.ndarray:
    """Pure: per-class weights from pixel counts. f_c = counts / sum; w_c = f_c^-power for
    classes with pixels, normalised so that the mean weight per pixel (Σ f_c w_c) is 1, then
    capped at ``opts.cap``; classes without pixels get 1 (they never occur as targets)."""
    counts = np.asarray(counts, np.float64)
    if counts.sum() <= 0:
        raise InputError("class_weights = 'auto': the training labels have no supervised pixel")
    f = counts / counts.sum()
    present = f > 0
    w = np.ones_like(f)
    w[present] = f[present] ** (-float(opts.power))
    w[present] /= float((f[present] * w[present]).sum())
    return np.minimum(w, float(opts.cap))


def class_weights_from_labels(labels_dir: str | Path, train_keys: set[str], num_classes: int,
                              opts: ClassWeightOptions = ClassWeightOptions()) -> tuple[list[float], list[float]]:
    """(weights, pixel frequencies) from the label maps of the TRAINING images ``train_keys``."""
    counts = label_pixel_counts(labels_dir, train_keys, num_classes, opts.working_mpp)
    w = class_weights_from_counts(counts, opts)
    return [round(float(x), 4) for x in w], [float(x) for x in counts / counts.sum()]


def _resolve_auto_class_weights(loss: dict[str, Any], labels_dir: str | Path, val: list[str],
                                num_classes: int) -> dict[str, Any]:
    """``[loss] class_weights = "auto"`` -> the list from the training labels (held-out keys
    excluded); the options keys (class_weight_power / _cap / _working_mpp) are consumed. The
    weights and frequencies are written to ``<labels_dir>/class_weights.json``."""
    loss = dict(loss)
    opts = ClassWeightOptions(power=float(loss.pop("class_weight_power", 0.5)),
                              cap=float(loss.pop("class_weight_cap", 10.0)),
                              working_mpp=float(loss.pop("class_weight_working_mpp", 0.5)))
    if loss.get("class_weights") != "auto":
        return loss
    man = json.loads((Path(labels_dir) / "manifest.json").read_text())
    held = set(val)
    train = {it["key"] for it in man["accepted"] if it["key"] not in held}
    w, f = class_weights_from_labels(labels_dir, train, num_classes, opts)
    loss["class_weights"] = w
    from ..taxonomy import PAGET13

    names = list(PAGET13.names)[:num_classes]
    atomic_write_text(Path(labels_dir) / "class_weights.json", json.dumps(
        {"options": asdict(opts), "n_train_images": len(train),
         "classes": names, "weights": w, "pixel_frequency": [round(x, 6) for x in f]}, indent=1))
    log.info("class weights (auto, %d training images): %s", len(train),
             ", ".join(f"{n} {x:.3f}" for n, x in zip(names, w)))
    return loss


def training_config(cfg: Mapping[str, Any], labels_dir: str | Path) -> dict[str, Any]:
    """The shared trainer's config: the file's sections over the paper's defaults, plus the
    aggregated labels as a ``pseudo`` dataset; ``[loss] class_weights = "auto"`` is resolved
    from the training images' labels (``ClassWeightOptions``)."""
    d: dict[str, Any] = {k: dict(v) for k, v in PAPER_TRAIN_DEFAULTS.items()}
    for sec, v in cfg.items():
        if sec == "distill":
            continue
        if isinstance(v, Mapping) and isinstance(d.get(sec), dict):
            d[sec].update(v)
        else:
            d[sec] = v
    if "preset" in d["model"] and "config" in d["model"]:
        d["model"].pop("preset")
    if not d.get("data"):
        d["data"] = [{"kind": "pseudo", "path": str(labels_dir), "name": "paget"}]
        val = val_keys(cfg["distill"]["images"]) if "distill" in cfg and "images" in cfg["distill"] else []
        if val:
            d["data"][0]["val"] = val
    if d.get("loss", {}).get("class_weights") == "auto" or any(k.startswith("class_weight_") for k in d.get("loss", {})):
        val = val_keys(cfg["distill"]["images"]) if "distill" in cfg and "images" in cfg["distill"] else []
        d["loss"] = _resolve_auto_class_weights(d["loss"], labels_dir, val, _num_classes(d["model"]))
    return d


def _num_classes(model: Mapping[str, Any]) -> int:
    """Number of outputs of the student the config builds (PAGET: 14 = 13 classes + background)."""
    if "num_classes" in model:
        return int(model["num_classes"])
    from ..taxonomy import PAGET13

    return len(PAGET13.names)


def distill(config: Mapping[str, Any] | str | Path, *, labels_only: bool = False,
            overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``segtme distill``: build the aggregated labels, then train the student with the shared
    trainer. ``overrides`` like {"run.max_steps": 10}. Returns {"labels_dir", "train": summary}."""
    from ..train.config import read_config_file, train_config_from_dict
    from ..train.trainer import Trainer

    cfg = dict(read_config_file(config)) if isinstance(config, (str, Path)) else dict(config)
    for k, v in (overrides or {}).items():
        sec, _, key = k.partition(".")
        cfg.setdefault(sec, {})[key] = v
    if "distill" not in cfg:
        raise InputError("config has no [distill] section")
    spec = parse_distill_section(cfg["distill"])
    labels = build_labels(spec)
    result: dict[str, Any] = {"labels_dir": str(labels)}
    if labels_only:
        return result
    tc = train_config_from_dict(training_config(cfg, labels), source=str(config) if isinstance(config, (str, Path)) else None)
    trainer = Trainer(tc)
    try:
        result["train"] = trainer.fit()
    finally:
        trainer.close()
    return result
