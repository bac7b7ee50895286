#!/usr/bin/env python
"""Sweep the maps -> nuclei post-processing on TRAINING images (never the held-out split).

The model's maps of every image are computed once (the product's tiling and blending,
``inference.engine.predict_maps`` at the model's working MPP); each post-processing setting then
runs the one maps -> nuclei step (``inference.maps.instances_from_maps``) on them, the instances
go back to the ground truth's grid by the product's nearest-neighbour rule and are scored with
``eval.metrics`` (PQ, AJI), averaged per dataset over images as ``segtme eval`` does.

    python scripts/tune_postprocess.py --data configs/default_model.toml \
        --set edge_threshold=0.15 --set edge_scale=2.7,edge_threshold=0.15 [--limit N] [--out FILE]

Each ``--set`` is one setting: comma-separated ``name=value`` overrides of the model's
``postprocess`` (``models.config.PostprocessParams``); the model's own setting is always
included as "model". Prints one row per setting: per-dataset PQ / AJI and the mean of MoNuSeg
PQ, MoNuSeg AJI, CoNSeP PQ and GBM PQ (the stage-4 rule's four figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np


def parse_setting(text: str) -> dict[str, float | int]:
    """``name=value[,name=value]`` -> overrides, each value cast to its field's type (int / float)."""
    from dataclasses import fields

    from segtme.models.config import PostprocessParams

    types = {f.name: (int if f.type in (int, "int") else float) for f in fields(PostprocessParams)}
    out: dict[str, float | int] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if not k or not v:
            raise SystemExit(f"--set {text!r}: expected name=value[,name=value]")
        if k not in types:
            raise SystemExit(f"--set {text!r}: unknown parameter {k!r}; known: {sorted(types)}")
        out[k] = types[k](float(v))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", required=True, help="training config whose train split is scored")
    ap.add_argument("--set", action="append", default=[], help="name=value[,name=value] (repeatable)")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    from segtme.eval import metrics as M
    from segtme.eval.evaluate import labels_to_input, load_items
    from segtme.inference.engine import predict_maps, to_working
    from segtme.inference.maps import instances_from_maps
    from segtme.models.registry import load_model

    lm = load_model(args.model, "cpu")
    base = lm.config.post
    settings = {"model": base}
    for s in args.set:
        settings[s] = replace(base, **parse_setting(s))
    items = load_items(args.data, "train", limit=args.limit or None)
    scores: dict[str, dict[str, list[tuple[float, float]]]] = {k: {} for k in settings}
    for it in items:
        rgb, gt, _ = it.load()
        rgb_w, s = to_working(rgb, it.mpp, lm.config)
        maps = predict_maps(lm, rgb_w)
        for key, post in settings.items():
            inst = labels_to_input(np.asarray(instances_from_maps(maps, post).inst, np.int32), s, gt.shape)
            ov = M.overlaps(gt, inst)
            scores[key].setdefault(it.dataset, []).append((M.panoptic_quality(gt, inst, ov=ov).pq, M.aji(gt, inst, ov)))
        print(f"{it.name}: done", file=sys.stderr, flush=True)
    rows = []
    for key, per in scores.items():
        row = {"setting": key, **{f"{d} {m}": float(np.mean([x[i] for x in v])) for d, v in per.items()
                                   for i, m in enumerate(("pq", "aji"))}, **{f"{d} n": len(v) for d, v in per.items()}}
        four = [row.get("monuseg pq"), row.get("monuseg aji"), row.get("consep pq"), row.get("gbm pq")]
        row["mean4"] = float(np.mean([v for v in four if v is not None])) if any(v is not None for v in four) else None
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
