"""`segtme train`, `segtme pseudo-label`, `segtme curriculum`: training entry points
(single process, or one process per GPU under ``torchrun``)."""

from __future__ import annotations

import argparse
import json


def _parse_set(items: list[str] | None) -> dict:
    """``--set run.max_steps=100`` -> {"run.max_steps": 100} (values parsed as JSON when possible)."""
    out = {}
    for it in items or []:
        if "=" not in it or "." not in it.split("=", 1)[0]:
            from ..errors import InputError

            raise InputError(f"--set expects SECTION.KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def register(sub: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "train", help="train a model from a TOML/YAML run config (--resume continues a saved run; torchrun for multi-GPU)",
        description="Train one run from a config (docs/training.md). The run's whole state is ONE file ([run] state_file), "
                    "saved every save_every steps and on SIGTERM (exit 143); --resume continues it exactly.",
        epilog="examples:\n  segtme train configs/default_model_ft3s.toml\n  segtme train configs/default_model_ft3s.toml --resume\n"
               "  segtme train configs/example_monuseg.toml --set run.max_steps=100\n"
               "  torchrun --nproc_per_node=8 -m segtme.cli train configs/uni2_stage1_pannuke.toml",
        formatter_class=raw)
    p.add_argument("config", help="run config (.toml, .yaml); see docs/training.md and configs/")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its state file ([run] state_file); without it a run whose state file exists is refused")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value, e.g. run.max_steps=100")
    p.set_defaults(func=run_train)

    q = sub.add_parser(
        "pseudo-label", help="entropy-filtered pseudo-labels (two-pass, resumable, shardable)",
        description="Predict every unlabelled patch, keep those whose mean foreground entropy is below the "
                    "--tau-percentile percentile of the corpus, write <patch>_sem_map.png + manifest.json.",
        epilog="example:\n  segtme pseudo-label --model default --data ../shared/data/mitoses-amibr/patches --kind images "
               "--mpp 0.25 --out runs/pseudo",
        formatter_class=raw)
    q.add_argument("--model", required=True, help="model spec (checkpoint .json, preset or shipped name)")
    q.add_argument("--data", required=True, help="image folder (TCGA-UT layout or any folder of images)")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--kind", default="auto", choices=["auto", "tcga_ut", "images", "folder"], help="data layout (auto: TCGA-UT if scale folders exist)")
    q.add_argument("--mpp", type=float, default=None, help="MPP of the images (kind images; TCGA-UT knows its scales)")
    q.add_argument("--scales", default=None, help="TCGA-UT scales to use, e.g. 0 or 0,1,2,3,4,5")
    q.add_argument("--tau-percentile", type=float, default=70.0, help="keep patches with mean foreground entropy below this corpus percentile")
    q.add_argument("--shard", default=None, metavar="I/N", help="process shard I of N (default: torchrun rank/world, else 0/1)")
    q.add_argument("--pass", dest="which", choices=["both", "stats", "write"], default="both",
                   help="stats: pass 1 only; write: pass 2 only (needs all stats shards)")
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--device", default="auto")
    q.set_defaults(func=run_pseudo)

    c = sub.add_parser(
        "curriculum", help="the paper's three-stage pseudo-label curriculum (resumable)",
        description="Stage 1 -> pseudo-labels -> stage 2 [-> pseudo-labels -> stage 3]; finished parts are skipped on rerun, "
                    "an interrupted stage continues from its state file.",
        epilog="examples:\n  segtme curriculum configs/curriculum_default.toml\n  segtme curriculum configs/curriculum_example.toml",
        formatter_class=raw)
    c.add_argument("config", help="curriculum config (.toml/.yaml); see configs/curriculum_example.toml")
    c.set_defaults(func=run_curriculum)


def run_train(args: argparse.Namespace) -> int:
    from ..train.config import read_config_file
    from ..train.trainer import train_from_config

    raw = read_config_file(args.config)
    if raw.get("task") == "mitosis":  # the mitosis teacher (segtme.mitosis.train, configs/mitosis.toml)
        from ..mitosis.train import train_mitosis_from_config

        m = train_mitosis_from_config(raw, _parse_set(args.set))
        print(json.dumps({k: m[k] for k in ("recall", "precision", "f1", "auc")}, default=str))
        return 0
    res = train_from_config(args.config, _parse_set(args.set), resume=bool(args.resume))
    if res.get("interrupted"):
        print(f"stopped by {res['interrupted']} after step {res['step']}/{res['total_steps']}; state saved to "
              f"{res['state_file']}; continue with: segtme train {args.config} --resume")
        return 143
    best = res["best"]
    if best:
        print(f"best checkpoint: {res['out_dir']}/checkpoints/{best[0]['json']} ({best[0]['metric']} = {best[0]['value']:.4f})")
    return 0


def run_pseudo(args: argparse.Namespace) -> int:
    from ..train.pseudolabel import PseudoLabelConfig, parse_shard, run_pseudo_label

    scales = [int(s) for s in args.scales.split(",")] if args.scales else None
    cfg = PseudoLabelConfig(model=args.model, data=args.data, out=args.out, kind=args.kind, mpp=args.mpp, scales=scales,
                            tau_percentile=args.tau_percentile, batch_size=args.batch_size, device=args.device)
    shard = parse_shard(args.shard)
    res = run_pseudo_label(cfg, shard=shard, which=args.which)
    print(json.dumps(res, indent=2))
    return 0


def run_curriculum(args: argparse.Namespace) -> int:
    from ..train.curriculum import run_curriculum_file

    res = run_curriculum_file(args.config)
    print(json.dumps(res, indent=2, default=str))
    return 0
