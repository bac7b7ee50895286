"""`segtme train-narrator`: supervised fine-tuning of a narrative LM on prompt -> narrative JSONL."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-narrator",
        help="fine-tune a local causal LM on TME prompt -> narrative pairs (loss on narrative tokens only)",
        description="SFT as in the SegTME-UNI2 paper (section 8.2) with transformers. DATA is JSONL with "
        "'prompt' (the paper template: TME features / Phenotype labels / Biological tokens / Narrative:) and "
        "'narrative'. The output directory is loadable by the 'transformers' narrative backend.",
        epilog="examples:\n  segtme train-narrator --data pairs.jsonl --base-model /path/to/causal-lm --out narrator_out\n  segtme train-narrator --data pairs.jsonl --tiny-base --out /tmp/narrator --max-steps 5   # smoke test",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="JSONL training pairs")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--base-model", help="local causal-LM directory to start from (nothing is downloaded)")
    src.add_argument("--tiny-base", action="store_true",
                     help="start from a tiny randomly initialised GPT-2 with a tokenizer trained on DATA (smoke tests)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimiser steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=None, help="tokens per example (default: model context)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from ..narrative.sft import build_tiny_base_model, load_sft_jsonl, train_narrator

    examples = load_sft_jsonl(args.data)
    with tempfile.TemporaryDirectory(prefix="segtme-narrator-base-") as tmp:
        base = args.base_model
        if args.tiny_base:
            base = build_tiny_base_model(Path(tmp) / "tiny", [e.prompt + " " + e.narrative for e in examples], seed=args.seed)
        res = train_narrator(
            examples, base, args.out, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
            lr=args.lr, max_length=args.max_length, device=args.device, seed=args.seed, overwrite=args.overwrite,
        )
    print(f"trained {res.steps} steps on {res.n_examples} pairs ({res.device}); loss {res.first_loss:.4f} -> "
          f"{res.last_loss:.4f}; saved {res.out_dir}")
    return 0
