"""`segtme narrate-eval`: a narrative backend's unsupported-claim rate and fallback rate on real regions."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "narrate-eval",
        help="measure a narrative backend with the grounding verifier (unsupported-claim rate, fallback rate)",
        description="Run narrative backend B on the TME tokens of every region in DATA, verify each narrative "
        "(every number bound to its quantity, every phenotype to its axis) and print the unsupported-claim rate "
        "(failed claims / claims) and the fallback rate (regions whose narrative the report would replace by the "
        "template's). DATA: a tme.json report, a directory of reports, a label-map dataset (CoNSeP-style index.json "
        "with inst + type_map; MoNuSeg/GBM instance maps with one fixed class) or a data root holding such datasets.",
        epilog="examples:\n  segtme narrate-eval --backend template --data ../shared/data --limit 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", required=True, choices=["template", "transformers", "openai"])
    p.add_argument("--data", required=True, help="reports or label-map datasets (see above)")
    p.add_argument("--limit", type=int, default=None, help="at most this many regions")
    p.add_argument("--images-per-dataset", type=int, default=None, help="at most this many images per label-map dataset")
    p.add_argument("--tiles", type=int, default=1, help="also evaluate the nuclei of each tile of a TILES x TILES grid")
    p.add_argument("--model-dir", default=None, help="transformers backend: local causal-LM directory "
                   "(or SEGTME_NARRATOR_MODEL)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="transformers backend: generation length")
    p.add_argument("--device", default=None, help="transformers backend: cuda / cpu (default: cuda if available)")
    p.add_argument("--openai-base-url", default=None, help="openai backend: e.g. http://localhost:8000/v1 "
                   "(or SEGTME_OPENAI_BASE_URL); key from SEGTME_OPENAI_API_KEY")
    p.add_argument("--openai-model", default=None, help="openai backend: model name (or SEGTME_OPENAI_MODEL)")
    p.add_argument("--timeout", type=float, default=60.0, help="openai backend: seconds per request")
    p.add_argument("--show", type=int, default=5, help="print the failed claims of this many regions")
    p.add_argument("--json", default=None, help="also write the result (per region) to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..errors import InputError
    from ..narrative.backends import get_backend
    from ..narrative.evaluate import evaluate_backend
    from ..narrative.sources import SourceOptions, load_inputs

    if args.images_per_dataset is not None and args.images_per_dataset < 1:
        raise InputError(f"--images-per-dataset must be >= 1, got {args.images_per_dataset}")
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise InputError(f"output directory {Path(args.json).resolve().parent} does not exist")
    opts: dict = {}
    if args.backend == "transformers":
        opts.update(model_dir=args.model_dir, max_new_tokens=args.max_new_tokens, device=args.device)
    elif args.backend == "openai":
        opts.update(base_url=args.openai_base_url, model=args.openai_model, timeout=args.timeout)
    backend = get_backend(args.backend, **opts)  # validates its options before any data is read
    src = SourceOptions(limit=args.limit, images_per_dataset=args.images_per_dataset, tiles=args.tiles)
    inputs = load_inputs(args.data, src)
    res = evaluate_backend(backend, inputs)
    print(res.summary())
    shown = 0
    for r in res.regions:
        if shown >= args.show or not (r.failed or r.error):
            continue
        shown += 1
        print(f"- {r.name}: " + (f"backend error: {r.error}" if r.error else "; ".join(r.failed[:4])
                                 + (f" (+{len(r.failed) - 4} more)" if len(r.failed) > 4 else "")))
    if args.json:
        from ..export.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(res.to_dict(include_regions=True), indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    return 0
