"""`segtme analyze IMAGE`: nuclei (QuPath GeoJSON), overlay PNG, CSV table and TME report.

PAGET models (``--model paget_s`` / ``paget_h`` / a PAGET .json): nuclei.geojson also holds the
tissue regions as classified QuPath annotations (first in the FeatureCollection), so a single
File > Import objects brings both into QuPath; overlay.png tints the tissue regions under the
nucleus outlines; tme.json uses the 13-class (paget13) features and tokens.

All outputs are written atomically, and only after the whole analysis succeeded: a failure
leaves no new files behind (a pre-existing output file is left untouched).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="segment and classify nuclei in an H&E image; write GeoJSON, overlay, CSV and TME report",
        description="Segment and classify nuclei in an H&E image (PNG/JPEG/TIFF). Writes nuclei.geojson "
        "(QuPath: File > Import objects), overlay.png, nuclei.csv and tme.json into --out. With a PAGET model "
        "(paget_s / paget_h) nuclei.geojson also contains the tissue regions as classified annotations.",
    )
    p.add_argument("image", help="PNG, JPEG or TIFF image")
    p.add_argument("--mpp", type=float, default=None,
                   help="microns per pixel of the image (required unless the TIFF has resolution tags)")
    p.add_argument("--model", default="default", help="model name (see `segtme models`) or path to a .json/.safetensors")
    p.add_argument("--weights", default=None, help="weights .safetensors for the model (overrides the config's)")
    p.add_argument("--instance-source", default=None,
                   help="PAGET-H only: model giving the nucleus instances (default: the config's, i.e. the shipped "
                   "'default' UperHoVer); a model name or .json/.safetensors path, or 'classical'")
    p.add_argument("--out", default=None, help="output directory (default: <image stem>_segtme next to the image)")
    p.add_argument("--cells", action="store_true", help="write QuPath cell objects (nucleus + 5 µm expansion) instead of detections")
    p.add_argument("--gzip", action="store_true", help="write nuclei.geojson.gz")
    p.add_argument("--narrative", default="template", help="narrative backend for the TME report (default: template)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="forward-pass arithmetic: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    p.add_argument("--tile", type=int, default=None, help="tile size in working px (default: the model's)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in working px (default: the model's)")
    p.add_argument("--batch", type=int, default=None, help="tiles per forward pass (default: 8 x 256² working px per batch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..errors import InputError, SegTMEError
    from ..export.bundle import write_outputs
    from ..inference.imageio import read_image, validate_mpp
    from ..models.registry import load_model
    from ..pipeline import analyze, count_tiles

    log = logging.getLogger("segtme.analyze")
    image_path = Path(args.image)
    out = Path(args.out) if args.out else image_path.with_name(image_path.stem + "_segtme")
    if args.batch is not None and args.batch <= 0:
        raise InputError(f"--batch must be positive, got {args.batch}")
    if args.mpp is not None:
        validate_mpp(args.mpp, "--mpp")

    img = read_image(image_path)  # validates the file before the (slow) model load
    mpp = args.mpp if args.mpp is not None else img.mpp
    if mpp is None:
        raise InputError(f"{image_path}: the image has no resolution information; pass --mpp (microns per pixel)")
    try:
        model = load_model(args.model, args.device, weights=args.weights, precision=args.precision)
    except ValueError as e:  # invalid --device
        if isinstance(e, SegTMEError):
            raise
        raise InputError(str(e)) from None
    if args.instance_source is not None:
        from ..paget.model import is_paget, paget_mode

        if not (is_paget(model.config) and paget_mode(model.config) == "panoptic"):
            raise InputError(f"--instance-source applies to PAGET-H models only; {model.config.name!r} is not one")

    bar = None
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        total = count_tiles(img.rgb.shape, mpp, model.config, tile=args.tile, overlap=args.overlap)
        bar = tqdm(total=total, unit="tile", desc="segmenting", disable=None)
        progress = bar.update
    try:
        res = analyze(
            img.rgb, mpp, model, narrative_backend=args.narrative,
            output_type="cell" if args.cells else "detection",
            tile=args.tile, overlap=args.overlap, batch_size=args.batch, progress=progress,
            instance_source=args.instance_source,
        )
    finally:
        if bar is not None:
            bar.close()
    res.nuclei.meta["source"] = str(image_path)
    res.notes[:0] = img.notes

    # all files staged and then moved into place (no partial outputs); overlay in a worker thread
    written = write_outputs(res, out, img.rgb, gzip=args.gzip)

    counts: dict[str, int] = {}
    for c in res.nuclei.class_names:
        counts[c] = counts.get(c, 0) + 1
    print(f"{len(res.nuclei)} nuclei ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items())) or 'none'}) "
          f"at {mpp:g} µm/px with model {model.config.name} [{model.source}]")
    if res.paget is not None:
        area = {f["properties"]["classification"]["name"]: f["properties"]["measurements"].get("Area µm^2")
                for f in res.tissue_features}
        print(f"{len(res.tissue_features)} tissue annotation(s) in nuclei.geojson: "
              + (", ".join(f"{k} {v:.0f} µm²" for k, v in area.items() if v is not None) or "none"))
    for p in written:
        print(f"wrote {p}")
    if res.report is None:
        log.info("TME report not written (segtme.tme.report is not available)")
    return 0
