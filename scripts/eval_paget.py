#!/usr/bin/env python
"""Held-out evaluation of the shipped PAGET student (docs/paget.md, "Shipped student: measured").

On the validation images of a distillation run (the images the labels manifest lists whose key
is in the run's held-out list — never trained on by the student, the default nucleus model or
the mitosis teacher):

1. agreement with its teachers: per PAGET class, Dice between the student's map (PAGET-S,
   brought to the image grid) and the aggregated teacher labels; pooled over images;
2. nucleus-class F1 against CoNSeP's human labels (HoVer-Net type F1 through the consep4
   mapping, held-out CoNSeP images) for: the default model (its own CoNSeP-4 classes), the
   teacher ensemble (the aggregated labels on the default model's nuclei), PAGET-H (the student's
   majority vote on the same nuclei, without and with the mitosis teacher) and PAGET-S
   (connected components of the student's nucleus pixels);
3. the paper's claim "the student matches or beats the teacher ensemble": PAGET-H vs the
   ensemble per CoNSeP class on the same nuclei.

    python scripts/eval_paget.py --config configs/paget_distill_b0.toml --student paget_h_b0 \
        [--out docs/bench_paget] [--limit N]

The mean Dice over the learned classes (every class but ``paget.ship.UNLEARNED``; an undefined
Dice counts 0) is the first criterion of the ship rule in ``configs/paget_distill_b0_v2.toml``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "paget_distill_b0.toml"))
    ap.add_argument("--student", default="paget_h_b0", help="student model spec (shipped name or .json)")
    ap.add_argument("--out", default=str(REPO / "docs" / "bench_paget"))
    ap.add_argument("--limit", type=int, default=0, help="at most this many held-out images (0 = all)")
    ap.add_argument("--consep-labels", default=None, help="CoNSeP labels folder (default: <data>/consep-train/labels)")
    args = ap.parse_args(argv)

    from segtme.data.sample import load_class_json, read_label, read_rgb
    from segtme.eval.metrics import TypeMatch, detection_type_stats, instance_centroids, match_types, radius_px_for_mpp
    from segtme.models.registry import load_model
    from segtme.paget import taxonomy as pt
    from segtme.paget.distill import val_keys
    from segtme.paget.evaluate import class_agreement, instance_classes, pooled_agreement, to_consep4
    from segtme.paget.geometry import resize_labels
    from segtme.paget.runner import analyze_paget, instance_map_from_model, mitosis_marker
    from segtme.taxonomy import CONSEP4, PAGET13
    from segtme.train.config import read_config_file

    cfg = read_config_file(args.config)
    labels_dir = REPO / cfg["distill"]["labels_dir"] if not Path(cfg["distill"]["labels_dir"]).is_absolute() else Path(cfg["distill"]["labels_dir"])
    man = json.loads((labels_dir / "manifest.json").read_text())
    import os

    os.chdir(REPO)
    held = set(val_keys(cfg["distill"]["images"]))
    items = [it for it in man["accepted"] if it["key"] in held]
    if args.limit:
        items = items[: args.limit]
    consep_lab = Path(args.consep_labels) if args.consep_labels else REPO.parent / "shared" / "data" / "consep-train" / "labels"

    student = load_model(args.student, "cpu")
    default = load_model("default", "cpu")
    mark = mitosis_marker("mitosis", "cpu")
    agree_rows, per_img = [], []
    matches: dict[str, list] = {k: [] for k in ("default", "ensemble", "paget_h", "paget_h_mitosis", "paget_s")}
    t0 = time.time()
    for it in items:
        key, mpp = it["key"], float(it["mpp"])
        rgb = read_rgb(it["image"])
        lab = read_label(labels_dir / it["sem_map"]).astype(np.uint8)
        res_s = analyze_paget(rgb, mpp, student, mode="semantic", mitosis=None)
        sem_in = resize_labels(res_s.sem, rgb.shape[:2], 1.0 / res_s.scale)
        ag = class_agreement(sem_in, lab)
        per_img.append(ag)
        agree_rows.append({"key": key, **{PAGET13.names[c]: round(v["dice"], 4) for c, v in ag.items()
                                          if not math.isnan(v["dice"])}})
        if not key.startswith("consep_"):
            continue
        stem = key[len("consep_"):]
        gt_inst = read_label(consep_lab / f"{stem}_inst.png")
        gt_cls_d = load_class_json(consep_lab / f"{stem}_class.json")
        gids, gxy = instance_centroids(gt_inst)
        gcls = np.array([gt_cls_d.get(int(i), 0) for i in gids])
        r = radius_px_for_mpp(mpp)
        # default model (and the instances every PAGET-H / ensemble variant uses)
        inst, dcls = instance_map_from_model(default, rgb, mpp)
        pids, pxy = instance_centroids(inst)
        matches["default"].append(match_types(gxy, gcls, pxy, dcls[pids - 1], r))
        ens = to_consep4(instance_classes(inst, lab))[pids - 1]
        matches["ensemble"].append(match_types(gxy, gcls, pxy, ens, r))
        res_h = analyze_paget(rgb, mpp, student, mode="panoptic", instance_source=default, mitosis=None)
        t = res_h.nuclei
        matches["paget_h"].append(match_types(gxy, gcls, t.centroid - 0.5, to_consep4(t.class_id), r))
        if mark is not None:  # the same PAGET-H nuclei + the mitosis teacher (as the shipped paget_h runs it)
            mark(t, rgb, mpp)
            matches["paget_h_mitosis"].append(match_types(gxy, gcls, t.centroid - 0.5, to_consep4(t.class_id), r))
        t = res_s.nuclei
        matches["paget_s"].append(match_types(gxy, gcls, t.centroid - 0.5, to_consep4(t.class_id), r))
        print(f"{key}: done ({time.time() - t0:.0f} s)", flush=True)

    pooled = pooled_agreement(per_img)
    class_ids = [1, 2, 3, 4]
    f1 = {}
    for name, ms in matches.items():
        if ms:
            st = detection_type_stats(TypeMatch.concat(ms), class_ids)
            f1[name] = {("F_" + CONSEP4.names[int(k[2:])] if k.startswith("F_") and k[2:].isdigit() else k): v
                        for k, v in st.items()}
    verdict = {}
    if "ensemble" in f1 and "paget_h" in f1:
        for c in class_ids:
            k = "F_" + CONSEP4.names[c]
            a, b = f1["paget_h"].get(k), f1["ensemble"].get(k)
            if a is None or b is None or math.isnan(a) or math.isnan(b) or (a == 0 and b == 0):
                verdict[k] = "n/a (undefined or 0 for both)"
            else:
                verdict[k] = "student >= ensemble" if a >= b - 0.005 else "student < ensemble"
    from segtme.paget.ship import UNLEARNED

    learned = [n for n in PAGET13.names if n not in UNLEARNED]
    dl = [pooled.get(PAGET13.names.index(n), float("nan")) for n in learned]
    mean_learned = float(np.mean([0.0 if math.isnan(v) else v for v in dl]))
    out = {"config": args.config, "student": args.student, "weights": student.source,
           "mean_dice_learned": round(mean_learned, 4), "learned_classes": learned,
           "held_out_images": [it["key"] for it in items], "n_images": len(items),
           "agreement_dice_pooled": {PAGET13.names[c]: (None if math.isnan(v) else round(v, 4)) for c, v in pooled.items()},
           "agreement_per_image": agree_rows, "consep_type_f1": f1, "student_vs_ensemble": verdict,
           "seconds": round(time.time() - t0, 1)}
    od = Path(args.out)
    od.mkdir(parents=True, exist_ok=True)
    (od / "eval_paget.json").write_text(json.dumps(out, indent=1, default=float))
    (od / "eval_paget.md").write_text(markdown(out) + "\n")
    print(json.dumps({k: out[k] for k in ("agreement_dice_pooled", "consep_type_f1", "student_vs_ensemble")},
                     indent=1, default=float))
    return 0


def _f(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown(out: dict) -> str:
    """The figures as markdown tables (docs/paget.md and the model card quote them)."""
    lines = [f"Student `{out['student']}` ({out['weights']}), {out['n_images']} held-out images.", "",
             "Agreement with the teachers (pooled Dice, student PAGET-S map vs aggregated labels, unresolved px not scored):",
             "", "| class | Dice |", "|---|---|"]
    for k, v in out["agreement_dice_pooled"].items():
        lines.append(f"| {k} | {_f(v)} |")
    if "mean_dice_learned" in out:
        lines.append(f"| **mean over the {len(out['learned_classes'])} learned classes** | "
                     f"**{_f(out['mean_dice_learned'])}** |")
    f1 = out["consep_type_f1"]
    if f1:
        cols = [k for k in next(iter(f1.values())) if k.startswith("F_") or k == "acc"]
        lines += ["", "Nucleus classes against CoNSeP's human labels (held-out CoNSeP images; HoVer-Net type F1, "
                  "centroid pairing; PAGET ids through the consep4 mapping):", "",
                  "| system | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, st in f1.items():
            lines.append(f"| {name} | " + " | ".join(_f(st.get(c)) for c in cols) + " |")
        lines += ["", "Student (PAGET-H, no mitosis teacher) vs the teacher ensemble on the same nuclei: "
                  + ", ".join(f"{k[2:]}: {v}" for k, v in out["student_vs_ensemble"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
