"""`segtme models`: list registered and shipped models and where their weights are."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list models and where their weights are (or that they are missing)",
        description="List the shipped models (with their weights files) and the registered presets "
        "(architectures you can train or load with --weights): name, architecture, backbone, working MPP "
        "(µm/px the model expects; images are resampled to it) and where the weights are.",
        epilog="examples:\n  segtme models\n  segtme analyze he.png --mpp 0.25 --model default   # a name from the list",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.registry import contract, presets, shipped_models

    rows = []
    for name, path in shipped_models().items():
        from ..models.config import ModelConfig

        cfg = ModelConfig.from_json(path)
        w = path.parent / (cfg.weights or f"{name}.safetensors")
        rows.append((name, cfg.arch, cfg.backbone, cfg.mpp, str(w) if w.is_file() else f"MISSING ({w})"))
    shipped = set(shipped_models())
    for name, cfg in presets().items():
        if name in shipped:  # the shipped config (listed above) shadows the architecture preset
            continue
        if cfg.weights:
            from pathlib import Path

            w = Path(cfg.weights)
            where = str(w) if w.is_file() else f"MISSING ({w})"
        elif contract(cfg).instances == "hook":
            where = "none needed (rule-based)"
        elif cfg.vit_taps is not None and "giant" in cfg.backbone:
            try:
                from ..models.registry import find_uni2h_checkpoint

                where = f"backbone: {find_uni2h_checkpoint()} (decode heads need --weights)"
            except Exception:
                where = "MISSING (UNI2-h backbone not found: set SEGTME_UNI2H; trained heads via --weights)"
        else:
            where = "architecture only (train with `segtme train`, pass --weights)"
        rows.append((name, cfg.arch, cfg.backbone, cfg.mpp, where))
    w0 = max(len(r[0]) for r in rows)
    print(f"{'name':<{w0}}  {'arch':<16} {'backbone':<24} {'mpp':>6}  weights")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:<16} {r[2]:<24} {r[3]:>6.3f}  {r[4]}")
    return 0
