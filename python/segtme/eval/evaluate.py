"""Evaluation harness: run a model (and the classical baseline) on labelled images, score them.

* ``predict_instances(model, rgb, mpp)``: the one "predict instances" interface for every model
  family: a learned model goes through the product path (``engine.to_working`` ->
  ``engine.predict_maps`` -> ``postprocess.hv_watershed`` / ``classify_instances``) and its
  working-resolution labels are mapped back to the input pixel grid (pixel-centre convention of
  docs/INTERFACES.md); the classical baseline calls its own ``predict_instances``.
* ``score_image``: every metric of ``metrics.py`` for one image at the ground truth's resolution.
* ``evaluate``: per-image rows + per-dataset aggregates for several models on the same images;
  ``write_outputs``: CSV, Markdown, JSON and optional error overlays.

Aggregation follows the literature: Dice, AJI, AJI+, PQ/DQ/SQ, bPQ, mPQ and per-class PQ are
computed per image and averaged over images (NaN-mean; HoVer-Net / PanNuke convention);
detection F_d, per-class F_c and MCC pool the centroid matches of all images of a dataset
(HoVer-Net's CoNSeP convention); mIoU sums the pixel confusion matrices of a dataset.
Class metrics are computed only when the ground truth has classes and the model's taxonomy is
the ground truth's (``consep4`` for CoNSeP); otherwise only class-agnostic metrics.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import InputError
from . import metrics as M

#: class-agnostic per-image columns, in table order
INSTANCE_KEYS = ("dice", "aji", "aji_plus", "pq", "dq", "sq")
#: HoVer-Net's published CoNSeP test figures (Graham et al. 2019, Table 3) for comparison
HOVERNET_CONSEP = {"F_d": 0.748, "F_Epithelial (incl. tumour)": 0.635, "F_Inflammatory": 0.631, "F_Spindle-shaped": 0.566}
#: HoVer-Net's published MoNuSeg (Kumar) test figures (Graham et al. 2019, Table 2)
HOVERNET_MONUSEG = {"dice": 0.826, "aji": 0.618, "dq": 0.770, "sq": 0.773, "pq": 0.597}


# ----------------------------------------------------------------------------- items
@dataclass
class EvalItem:
    """One labelled image. ``load()`` -> (rgb uint8 HxWx3, inst int32 HxW, classes {id: class} or None)."""

    name: str
    dataset: str
    mpp: float
    ref: Any  # segtme.data.sample.SampleRef
    gt_taxonomy: str | None = None
    #: robustness perturbation applied to the image (``eval/perturb.py``), None = clean
    perturb: str | None = None

    @property
    def group(self) -> str:
        """The dataset this item is reported under: ``dataset`` or ``dataset@perturbation``."""
        return self.dataset if self.perturb is None else f"{self.dataset}@{self.perturb}"

    def load(self) -> tuple[np.ndarray, np.ndarray, dict[int, int] | None]:
        from ..data.sample import FG_UNKNOWN, IGNORE

        rgb, inst, sem = self.ref.load()
        if self.perturb is not None:
            from .perturb import apply

            rgb = apply(self.perturb, rgb, self.mpp, self.name)
        if inst is None:
            raise InputError(f"{self.name}: no instance labels; evaluation needs instance ground truth")
        classes = None
        if sem is not None and self.ref.has_classes:
            s = np.where((sem == FG_UNKNOWN) | (sem == IGNORE), 0, sem)
            classes = M.class_of_instances(inst, s)
        return rgb, inst.astype(np.int32), classes


def items_from_refs(refs: Iterable[Any], gt_taxonomy: str | None = "consep4") -> list[EvalItem]:
    return [EvalItem(r.name, r.dataset, float(r.mpp), r, gt_taxonomy if r.has_classes else None) for r in refs]


def load_items(
    data: str | Path,
    split: str = "val",
    *,
    mpp: float | None = None,
    names: Sequence[str] | None = None,
    limit: int | None = None,
    gt_taxonomy: str = "consep4",
    default_mpp: float | None = None,
) -> list[EvalItem]:
    """Images to evaluate.

    data: a dataset folder (``images/`` + ``labels/<stem>_inst.png`` [+ ``_class.json``], as in
        ``../shared/data``), or a training config (.toml/.yaml/.json) whose ``[[data]]`` entries
        and held-out ``val`` lists define the split.
    split: for a config: ``val`` (the held-out images; default), ``train`` or ``all``; for a
        folder: ``all``/``val`` take every image (a folder has no held-out list of its own) unless
        its ``index.json`` has a ``split`` field, which is then filtered.
    mpp: override the µm/px of every image (folders without MPP need it).
    default_mpp: µm/px of the images whose metadata has none (the others keep theirs).
    names: keep only these sample names or stems. limit: first N images.
    gt_taxonomy: taxonomy of the ground-truth classes when present (CoNSeP: ``consep4``).
    """
    p = Path(data)
    if p.suffix in (".toml", ".yaml", ".yml", ".json") and p.is_file():
        from ..data.specs import data_specs_from_dicts, read_config_file, split_refs

        raw = read_config_file(p)
        specs = data_specs_from_dicts(raw.get("data"))
        seed = int(dict(raw.get("run") or {}).get("seed", 0))
        for sp in specs:
            if mpp is not None:
                sp.mpp = mpp
            if default_mpp is not None and sp.default_mpp is None:
                sp.default_mpp = default_mpp
            if not Path(sp.path).is_absolute():
                # relative paths are resolved against the config's directory's parent (repo root)
                # first, then the current directory
                cand = (p.resolve().parent.parent / sp.path).resolve()
                if cand.exists():
                    sp.path = str(cand)
        train, _, val = split_refs(specs, seed)
        if split == "val":
            refs = val
        elif split == "train":
            refs = train
        elif split == "all":
            refs = val + train
        else:
            raise InputError(f"unknown split {split!r}: use val, train or all")
    elif p.is_dir():
        from ..data.readers import read_folder

        refs = read_folder(p, mpp=mpp, default_mpp=default_mpp, split=None if split in ("all", "val") else split)
    else:
        raise InputError(f"--data {data}: not a dataset folder or a training config file")
    if names:
        wanted = set(names)
        refs = [r for r in refs if r.name in wanted or r.name.split("/", 1)[-1] in wanted or r.name.rsplit("/", 1)[-1] in wanted]
    if limit:
        refs = refs[: int(limit)]
    if not refs:
        raise InputError(f"no images selected from {data} (split={split})")
    return items_from_refs(refs, gt_taxonomy)


# ----------------------------------------------------------------------------- prediction
@dataclass
class Prediction:
    """Instances at the input resolution: ``inst`` int32 (H, W); ``classes`` {id: class id};
    ``seconds`` wall time of the prediction."""

    inst: np.ndarray
    classes: dict[int, int]
    seconds: float = 0.0


def labels_to_input(inst_work: np.ndarray, s: float, shape: tuple[int, int]) -> np.ndarray:
    """Map a working-resolution label map back to the input grid (nearest neighbour): input pixel
    i (centre i + 0.5) takes working pixel floor((i + 0.5) * s), clipped (INTERFACES.md);
    ``s`` = working px per input px. The product's ``resample.resample_labels``."""
    if abs(s - 1.0) < 1e-9 and inst_work.shape == tuple(shape):
        return inst_work
    from ..resample import resample_labels

    return resample_labels(inst_work, 1.0 / s, tuple(shape))


def predict_instances(model: Any, rgb: np.ndarray, mpp: float, *, batch_size: int = 8) -> Prediction:
    """Instances and classes of ``rgb`` (input px at ``mpp`` µm/px) from any registry model,
    through the product's one dispatch (``inference.instances.predict_instances``: hook models
    as they are, maps models tiled at their working MPP -> ``maps.instances_from_maps`` ->
    nearest back to the input grid)."""
    from ..inference.instances import predict_instances as product_instances
    from ..inference.options import InferenceOptions

    t0 = time.perf_counter()
    if model.contract.instances == "maps" and "hv" not in model.config.heads:
        raise InputError(f"model {model.config.name} has no HV head: instance evaluation needs one")
    ins = product_instances(model, rgb, mpp, InferenceOptions(batch_size=batch_size))
    inst = ins.inst.astype(np.int32, copy=False)
    classes = {i + 1: int(c) for i, c in enumerate(ins.class_id.tolist())}
    return Prediction(inst, classes, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- scoring
@dataclass
class ImageScore:
    """Scores of one model on one image. ``row``: per-image CSV values; ``match``: centroid
    matches for pooled detection stats (None without classes); ``conf``: pixel confusion."""

    row: dict[str, Any]
    match: M.TypeMatch | None = None
    conf: np.ndarray | None = None
    pq_match: tuple[np.ndarray, np.ndarray] = field(default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    classed: bool = False


def score_image(
    gt_inst: np.ndarray,
    gt_classes: dict[int, int] | None,
    pred: Prediction,
    mpp: float,
    class_ids: Sequence[int] | None,
) -> ImageScore:
    """All metrics of one image. ``class_ids``: classes to score (None: class-agnostic only)."""
    im = M.instance_metrics(gt_inst, pred.inst)
    row: dict[str, Any] = im.to_dict()
    pqr = M.panoptic_quality(gt_inst, pred.inst)
    radius = M.radius_px_for_mpp(mpp)
    t_ids, t_xy = M.instance_centroids(gt_inst)
    p_ids, p_xy = M.instance_centroids(pred.inst)
    if class_ids is not None and gt_classes is not None:
        row.update(M.multiclass_pq(gt_inst, gt_classes, pred.inst, pred.classes, class_ids))
        t_c = np.array([gt_classes.get(int(i), 0) for i in t_ids], np.int64)
        p_c = np.array([pred.classes.get(int(i), 0) for i in p_ids], np.int64)
        match = M.match_types(t_xy, t_c, p_xy, p_c, radius)
        det = M.detection_type_stats(match, class_ids)
        row.update({k: det[k] for k in ("F_d", "acc", *[f"F_{c}" for c in class_ids])})
        nc = max(class_ids) + 1
        conf = M.semantic_confusion(M.inst_to_semantic(gt_inst, gt_classes), M.inst_to_semantic(pred.inst, pred.classes), nc)
        classed = True
    else:
        # class-agnostic detection F1 and foreground IoU
        match = M.match_types(t_xy, np.ones(len(t_ids), np.int64), p_xy, np.ones(len(p_ids), np.int64), radius)
        row["F_d"] = M.detection_type_stats(match, [1])["F_d"]
        conf = M.semantic_confusion((gt_inst > 0).astype(np.int64), (pred.inst > 0).astype(np.int64), 2)
        classed = False
    row["seconds"] = pred.seconds
    return ImageScore(row, match, conf, (pqr.paired_true, pqr.paired_pred), classed)


# ----------------------------------------------------------------------------- evaluate
@dataclass
class EvalResult:
    """rows: one dict per (model, image); summary: {model: {dataset: {metric: value}}};
    class_names: {class id: name} of the scored taxonomy (None if class-agnostic)."""

    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    class_names: dict[int, str] | None
    models: list[str]


def _class_setup(model: Any, items: Sequence[EvalItem]) -> tuple[list[int] | None, dict[int, str] | None]:
    tax = model.config.tax
    has_cls = any(it.gt_taxonomy for it in items)
    if has_cls and tax.name in {it.gt_taxonomy for it in items if it.gt_taxonomy}:
        ids = [c.id for c in tax.nucleus_classes()]
        return ids, {c.id: c.name for c in tax.classes}
    return None, None


def evaluate(
    models: dict[str, Any],
    items: Sequence[EvalItem],
    *,
    overlay_dir: str | Path | None = None,
    progress: bool = False,
) -> EvalResult:
    """Run every model on every item (each image is read once) and score it.

    models: {label: LoadedModel}. overlay_dir: if given, an error overlay PNG per (model, image).
    """
    rows: list[dict[str, Any]] = []
    pooled: dict[tuple[str, str], list[ImageScore]] = {}
    setups = {label: _class_setup(m, items) for label, m in models.items()}
    class_names: dict[int, str] | None = None
    for k, it in enumerate(items):
        rgb, gt, gt_cls = it.load()
        for label, model in models.items():
            class_ids, names = setups[label]
            if names:
                class_names = names
            pred = predict_instances(model, rgb, it.mpp)
            sc = score_image(gt, gt_cls if it.gt_taxonomy else None, pred, it.mpp, class_ids if it.gt_taxonomy else None)
            row = {"model": label, "dataset": it.group, "image": it.name, "mpp": it.mpp,
                   "perturb": it.perturb or "none", **sc.row}
            if class_ids is not None and names:
                row = {(_rename(k2, names)): v for k2, v in row.items()}
            rows.append(row)
            pooled.setdefault((label, it.group), []).append(sc)
            if overlay_dir is not None:
                from ..export.atomic import atomic_write

                od = Path(overlay_dir)
                od.mkdir(parents=True, exist_ok=True)
                img = error_overlay(rgb, gt, pred.inst, sc.pq_match)
                from PIL import Image

                safe = it.name.replace("/", "__") + ("" if it.perturb is None else f"@{it.perturb}")
                with atomic_write(od / f"{safe}__{label}.png") as tmp:
                    Image.fromarray(img).save(tmp)
            if progress:
                print(f"  [{k + 1}/{len(items)}] {it.name}{'' if it.perturb is None else '@' + it.perturb} {label}: PQ {sc.row['pq']:.3f} AJI {sc.row['aji']:.3f} "
                      f"({pred.seconds:.1f} s)", flush=True)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for (label, ds), scores in pooled.items():
        class_ids, names = setups[label]
        ds_rows = [r for r in rows if r["model"] == label and r["dataset"] == ds]
        summary.setdefault(label, {})[ds] = aggregate(ds_rows, scores, class_ids, names)
    for label in models:
        all_rows = [r for r in rows if r["model"] == label and r["perturb"] == "none"]
        if not all_rows:
            continue
        summary.setdefault(label, {})["ALL"] = {
            "n_images": float(len(all_rows)),
            **{k: M.nanmean(r.get(k, math.nan) for r in all_rows) for k in INSTANCE_KEYS},
            "seconds_per_image": M.nanmean(r.get("seconds", math.nan) for r in all_rows),
        }
    return EvalResult(rows, summary, class_names, list(models))


def _rename(key: str, names: dict[int, str]) -> str:
    """``PQ_3`` -> ``PQ_<class name>`` (also F_, IoU_, MCC_)."""
    for pre in ("PQ_", "F_", "IoU_", "MCC_"):
        if key.startswith(pre) and key[len(pre):].isdigit():
            return pre + names.get(int(key[len(pre):]), key[len(pre):])
    return key


def aggregate(rows: list[dict[str, Any]], scores: list[ImageScore], class_ids: Sequence[int] | None,
              names: dict[int, str] | None) -> dict[str, float]:
    """Dataset-level metrics from per-image rows and scores (see module doc for the rules)."""
    out: dict[str, float] = {"n_images": float(len(rows))}
    for k in INSTANCE_KEYS:
        out[k] = M.nanmean(r.get(k, math.nan) for r in rows)
    out["seconds_per_image"] = M.nanmean(r.get("seconds", math.nan) for r in rows)
    matches = [s.match for s in scores if s.match is not None]
    confs = [s.conf for s in scores if s.conf is not None]
    classed = class_ids is not None and bool(scores) and all(s.classed for s in scores)
    if classed:
        pq_keys = ["bPQ", "mPQ"] + [_rename(f"PQ_{c}", names or {}) for c in class_ids]
        for k in pq_keys:
            out[k] = M.nanmean(r.get(k, math.nan) for r in rows)
        m = M.TypeMatch.concat(matches)
        det = M.detection_type_stats(m, class_ids)
        mcc = M.per_class_mcc(m, class_ids)
        for k, v in {**det, **mcc}.items():
            if k in ("tp_d", "fp_d", "fn_d"):
                continue
            out[_rename(k, names or {})] = v
    elif matches and all(not s.classed for s in scores):
        out["F_d"] = M.detection_type_stats(M.TypeMatch.concat(matches), [1])["F_d"]
    if confs and len({c.shape for c in confs}) == 1:
        conf = np.sum(confs, axis=0)
        mi = M.miou(conf)
        out["mIoU"] = mi["mIoU"]
        if classed:
            for k, v in mi.items():
                if k != "mIoU":
                    out[_rename(k, names or {})] = v
    return out


def robustness(result: EvalResult, key: str = "pq") -> dict[str, dict[str, dict[str, float]]]:
    """{model: {"<dataset>@<perturbation>": {"clean", "perturbed", "drop"}}} for ``key`` (PQ):
    drop = clean - perturbed, both means over the same images; plus ``"ALL@<perturbation>"``
    (mean over all images of the clean and perturbed runs)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label in result.models:
        rows = [r for r in result.rows if r["model"] == label]
        clean = {(r["dataset"], r["image"]): r.get(key, math.nan) for r in rows if r["perturb"] == "none"}
        by: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if r["perturb"] == "none":
                continue
            base = r["dataset"].rsplit("@", 1)[0]
            c = clean.get((base, r["image"]))
            if c is None:
                continue
            for g in (r["dataset"], f"ALL@{r['perturb']}"):
                by.setdefault(g, []).append((c, r.get(key, math.nan)))
        for g, pairs in by.items():
            c = M.nanmean(p[0] for p in pairs)
            q = M.nanmean(p[1] for p in pairs)
            out.setdefault(label, {})[g] = {"n_images": float(len(pairs)), "clean": c, "perturbed": q, "drop": c - q}
    return out


def robustness_markdown(result: EvalResult, key: str = "pq") -> str:
    rob = robustness(result, key)
    if not rob:
        return ""
    lines = [f"### robustness ({key.upper()} clean vs perturbed, same images; drop = clean - perturbed)", "",
             "| model | set | images | clean | perturbed | drop |", "|---|---|---:|---:|---:|---:|"]
    for label, groups in rob.items():
        for g in sorted(groups, key=lambda x: (x.startswith("ALL@"), x)):
            v = groups[g]
            lines.append(f"| {label} | {g} | {int(v['n_images'])} | {_fmt(v['clean'])} | {_fmt(v['perturbed'])} | {_fmt(v['drop'])} |")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- overlays
def error_overlay(rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, pq_match: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """RGB uint8 image with outlines: matched predictions (IoU > 0.5) green, false positives
    (unmatched predictions) red, false negatives (unmatched ground truth) filled yellow-ish and
    outlined yellow."""
    from skimage.segmentation import find_boundaries

    out = rgb[..., :3].copy()
    tp_pred = np.isin(pred, pq_match[1]) & (pred > 0)
    fp = (pred > 0) & ~tp_pred
    fn = (gt > 0) & ~np.isin(gt, pq_match[0])
    fn_lab = np.where(fn, gt, 0)
    out[fn] = (0.6 * out[fn] + 0.4 * np.array([255, 220, 0])).astype(np.uint8)
    out[find_boundaries(fn_lab, mode="inner")] = (255, 220, 0)
    out[find_boundaries(np.where(fp, pred, 0), mode="inner")] = (230, 20, 20)
    out[find_boundaries(np.where(tp_pred, pred, 0), mode="inner")] = (20, 200, 60)
    return out


# ----------------------------------------------------------------------------- outputs
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(result: EvalResult) -> str:
    """Per dataset and model: the aggregate metrics, models side by side (rows)."""
    lines: list[str] = []
    datasets: list[str] = []
    for label in result.models:
        for ds in result.summary.get(label, {}):
            if ds not in datasets:
                datasets.append(ds)
    for ds in datasets:
        keys: list[str] = []
        for label in result.models:
            for k in result.summary.get(label, {}).get(ds, {}):
                if k not in keys and k != "seconds_per_image":
                    keys.append(k)
        keys.append("seconds_per_image")
        lines.append(f"### {ds}")
        lines.append("")
        lines.append("| model | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---:|" * len(keys))
        for label in result.models:
            s = result.summary.get(label, {}).get(ds)
            if s is None:
                continue
            vals = [("%d" % s[k]) if k == "n_images" else _fmt(s.get(k, math.nan)) for k in keys]
            lines.append(f"| {label} | " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def write_outputs(result: EvalResult, out_dir: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``per_image.csv``, ``summary.md``, ``summary.json`` (atomically) into ``out_dir``."""
    from ..export.atomic import atomic_write_text
    from ..export.tables import rows_to_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "per_image.csv", "md": out / "summary.md", "json": out / "summary.json"}
    atomic_write_text(paths["csv"], rows_to_csv(result.rows))
    header = ""
    if meta:
        header = "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\n"
    atomic_write_text(paths["md"], "# segtme eval\n\n" + header + markdown_table(result) + "\n" + robustness_markdown(result))

    def clean(o: Any) -> Any:
        if isinstance(o, float) and math.isnan(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    atomic_write_text(paths["json"], json.dumps(clean({"meta": meta or {}, "summary": result.summary,
                                                       "robustness": robustness(result)}), indent=2, ensure_ascii=False))
    return paths
