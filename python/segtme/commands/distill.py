"""`segtme distill CONFIG`: PAGET multi-teacher distillation (aggregated labels + student training
with the shared trainer). See ``segtme.paget.distill`` for the config format."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="PAGET: aggregate teacher outputs into 13-class labels and train the SegFormer student",
        description="Build PAGET's hierarchically aggregated labels from teacher outputs ([distill] section) "
        "and train the student with the shared trainer ([run]/[model]/[optim]/[loss] sections).",
        epilog="examples:\n  segtme distill configs/paget_distill.toml\n  segtme distill configs/paget_distill_b0.toml --labels-only",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="TOML / YAML / JSON config with a [distill] section (see docs/paget.md)")
    p.add_argument("--labels-only", action="store_true", help="only build the aggregated labels")
    p.add_argument("--max-steps", type=int, default=None, help="override [run] max_steps")
    p.add_argument("--out-dir", default=None, help="override [run] out_dir")
    p.add_argument("--device", default=None, help="override [run] device (auto, cpu, cuda, ...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..paget.distill import distill

    ov = {}
    if args.max_steps is not None:
        ov["run.max_steps"] = int(args.max_steps)
    if args.out_dir:
        ov["run.out_dir"] = args.out_dir
    if args.device:
        ov["run.device"] = args.device
    res = distill(args.config, labels_only=args.labels_only, overrides=ov)
    print(json.dumps(res, indent=1, default=str))
    return 0
