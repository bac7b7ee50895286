"""`segtme eval`: score a model on labelled H&E, next to the classical baseline, on the same images."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on labelled images (Dice, AJI, PQ, per-class F1/MCC) next to the classical baseline",
        description=(
            "Run MODEL and the classical baseline on the same labelled images and write per-image CSV, "
            "a Markdown table and JSON aggregates. DATA is a dataset folder (images/ + labels/<stem>_inst.png "
            "[+ _class.json]) or a training config (.toml) whose held-out 'val' lists define --split val."
        ),
        epilog=(
            "examples:\n"
            "  segtme eval --model default --data ../shared/data/monuseg-train --default-mpp 0.25\n"
            "  segtme eval --model default --data configs/default_model.toml --split val --out eval_out\n"
            "  segtme eval --model my.json --data my_folder --mpp 0.5 --limit 5 --no-baseline\n\n"
            "Images whose index.json has no MPP need --default-mpp (those images) or --mpp (all images)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", "-m", default="default", help="model name, preset, or .json/.safetensors path (default: default)")
    p.add_argument("--weights", default=None, help="weights file for an architecture-only preset")
    p.add_argument("--data", "-d", required=True, action="append",
                   help="dataset folder or training config; repeat for several")
    p.add_argument("--split", default="val", choices=["val", "train", "all"], help="for a config: which split (default: val = held out)")
    p.add_argument("--mpp", default=None, metavar="MPP", help="µm/px of every image (overrides the dataset's)")
    p.add_argument("--default-mpp", default=None, metavar="MPP",
                   help="µm/px of the images whose metadata has none (e.g. 0.25 for 40x MoNuSeg)")
    p.add_argument("--names", nargs="*", default=None, help="only these image names/stems")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--out", "-o", default=None, help="output folder (per_image.csv, summary.md, summary.json)")
    p.add_argument("--overlays", action="store_true", help="also write error overlays (green TP, red FP, yellow FN) to OUT/overlays")
    p.add_argument("--no-baseline", action="store_true", help="skip the classical baseline")
    p.add_argument("--perturb", nargs="?", const="all", default=None, metavar="LIST",
                   help="also score perturbed copies of every image and report the PQ drop next to the clean score: "
                        "all (default when given) or a comma list of resample20x (through 0.5 µm/px and back), "
                        "jpeg70 (JPEG quality 70), stain (HED stain jitter, fixed per image)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="forward-pass arithmetic: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..eval.evaluate import evaluate, load_items, markdown_table, write_outputs
    from ..models import load_model

    from ..inference.imageio import validate_mpp

    if args.overlays and not args.out:
        raise InputError("--overlays needs --out DIR")
    mpp = validate_mpp(args.mpp, "--mpp") if args.mpp is not None else None
    default_mpp = validate_mpp(args.default_mpp, "--default-mpp") if args.default_mpp is not None else None
    if args.limit is not None and args.limit <= 0:
        raise InputError(f"--limit must be positive, got {args.limit}")
    items = []
    for d in args.data:
        try:
            items += load_items(d, args.split, mpp=mpp, names=args.names, limit=args.limit, default_mpp=default_mpp)
        except InputError as e:
            if "no MPP" not in str(e):
                raise
            what = str(e).split(";")[0]
            raise InputError(f"{what}; pass --default-mpp MPP for the images without one (e.g. 0.25 at 40x) "
                             "or --mpp MPP for all images") from None
    if args.perturb is not None:
        from ..eval.perturb import parse_perturbations, perturbed_items

        items = items + perturbed_items(items, parse_perturbations(args.perturb))
    models = {args.model if args.model != "classical" else "classical": load_model(args.model, args.device, weights=args.weights, precision=args.precision)}
    if not args.no_baseline and "classical" not in models:
        models["classical"] = load_model("classical", "cpu")
    print(f"evaluating {', '.join(models)} on {len(items)} image(s) ({args.split})", flush=True)
    result = evaluate(models, items, overlay_dir=(Path(args.out) / "overlays") if args.overlays else None, progress=True)
    print()
    print(markdown_table(result))
    if args.perturb is not None:
        from ..eval.evaluate import robustness_markdown

        print(robustness_markdown(result))
    if args.out:
        meta = {
            "model": f"{args.model} ({models[next(iter(models))].source})",
            "data": ", ".join(args.data),
            "split": args.split,
            "perturb": args.perturb or "none",
            "images": ", ".join(it.name for it in items),
        }
        paths = write_outputs(result, args.out, meta)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
