"""`segtme tme`: TME features, tokens, narrative and verifier for given instance + class maps."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tme",
        help="TME features/tokens/narrative from an instance map and a class map",
        description="Run analyze_tme_from_maps on INST (2D integer ids, 0 = background) and CLS (2D class ids "
        "of --taxonomy) and write the TME report (raw_data, interpretation, generated_tokens, narrative, verifier).",
        epilog="examples:\n"
        "  segtme tme --inst inst.png --cls cls.png --mpp 0.25 --out tme.json\n"
        "  segtme tme --inst inst.npy --cls cls.npy --taxonomy consep4   # report JSON on stdout",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--inst", required=True, help="instance map (.png 16-bit/8-bit label image, .tif, or .npy)")
    p.add_argument("--cls", required=True, help="class map, same size (.png, .tif, or .npy)")
    p.add_argument("--mpp", default=None, metavar="MPP", help="µm per pixel of the maps (default: unknown)")
    p.add_argument("--taxonomy", default="pannuke6", help="class set of --cls (pannuke6, consep4, paget13, ...)")
    p.add_argument("--out", default=None, help="write the report JSON here (default: print to stdout)")
    p.add_argument("--narrative-backend", default="template", choices=["template", "transformers", "openai"])
    p.add_argument("--model-dir", default=None, help="transformers backend: local causal-LM directory")
    p.add_argument("--openai-base-url", default=None, help="openai backend: e.g. http://localhost:8000/v1 "
                   "(or SEGTME_OPENAI_BASE_URL); key from SEGTME_OPENAI_API_KEY")
    p.add_argument("--openai-model", default=None, help="openai backend: model name (or SEGTME_OPENAI_MODEL)")
    p.add_argument("--timeout", type=float, default=60.0, help="openai backend: seconds")
    p.add_argument("--no-fallback", action="store_true", help="keep an LLM narrative even if the verifier rejects claims")
    p.set_defaults(func=run)


def read_label_map(path: str):
    """A label map as a numpy array *without* colour conversion (an RGB file stays 3-channel so
    validation can reject it clearly)."""
    from pathlib import Path

    import numpy as np

    from ..errors import InputError

    pth = Path(path)
    if not pth.is_file():
        raise InputError(f"file not found: {pth}")
    suf = pth.suffix.lower()
    try:
        if suf == ".npy":
            return np.load(pth, allow_pickle=False)
        if suf in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(pth)
        from PIL import Image

        with Image.open(pth) as im:
            return np.asarray(im)
    except InputError:
        raise
    except Exception as e:  # unreadable/corrupt file
        raise InputError(f"cannot read label map {pth}: {e}") from e


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..errors import InputError
    from ..export.atomic import atomic_write_text
    from ..tme.features import nuclei_table_from_maps
    from ..report import build_tme_report

    from ..inference.imageio import validate_mpp

    mpp = validate_mpp(args.mpp, "--mpp") if args.mpp is not None else None
    if args.out:
        from pathlib import Path

        out = Path(args.out)
        if out.is_dir():
            raise InputError(f"--out {out} is a folder; give a file name, e.g. {out / 'tme.json'}")
        if not out.parent.is_dir():
            raise InputError(f"output directory {out.parent} does not exist")
    inst = read_label_map(args.inst)
    cls = read_label_map(args.cls)
    table = nuclei_table_from_maps(inst, cls, mpp=mpp, taxonomy=args.taxonomy)
    opts: dict = {}
    if args.narrative_backend == "transformers":
        opts["model_dir"] = args.model_dir
    elif args.narrative_backend == "openai":
        opts.update(base_url=args.openai_base_url, model=args.openai_model, timeout=args.timeout)
    report = build_tme_report(table, args.narrative_backend, fallback_to_template=not args.no_fallback, **opts)
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        from pathlib import Path

        out = Path(args.out)
        if not out.parent.is_dir():
            raise InputError(f"output directory {out.parent} does not exist")
        atomic_write_text(out, text)
        print(f"wrote {out}: {report['raw_data']['N_total']} nuclei; "
              + "; ".join(f"{k}: {v}" for k, v in report["interpretation"].items()))
        print(report["narrative"])
    else:
        sys.stdout.write(text)
    return 0
