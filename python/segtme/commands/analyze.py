"""`segtme analyze IMAGE`: nuclei (QuPath GeoJSON), overlay PNG, CSV table and TME report.

PAGET models (``--model paget_s`` / ``paget_h`` / a PAGET .json): nuclei.geojson also holds the
tissue regions as classified QuPath annotations (first in the FeatureCollection), so a single
File > Import objects brings both into QuPath; overlay.png tints the tissue regions under the
nucleus outlines; tme.json uses the 13-class (paget13) features and tokens.

Order of work: every flag is checked, the output folder is created and a staging folder made in
it (so a bad ``--out`` fails in a second, not after the analysis), then the image is read, the
model loaded, the image analysed and the outputs written into the staging folder and moved into
place atomically. A failure, Ctrl-C or SIGTERM leaves no new files behind (a pre-existing output
file is left untouched); staging folders of runs killed with SIGKILL are removed by the next run
into the same folder.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

EXAMPLES = """\
examples:
  segtme analyze slide_region.png --mpp 0.25
  segtme analyze he.tif --out results/he --cells --cell-expansion 4 --gzip
  segtme analyze he.png --mpp 0.5 --model paget_s --no-overlay

outputs (in --out): nuclei.geojson (QuPath: File > Import objects, or drag onto the image),
nuclei.csv (one row per nucleus; 'Object ID' = the GeoJSON object id), overlay.png (a
preview with a legend; longest edge capped by --overlay-size) and tme.json (TME report).
The TME report is not a QuPath object unless --report-annotation is given: an image-sized
annotation would become the parent of your own annotations on Objects > Annotations... >
Resolve hierarchy.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="segment and classify nuclei in an H&E image; write GeoJSON, overlay, CSV and TME report",
        description="Segment and classify nuclei in an H&E image (PNG/JPEG/TIFF). Writes nuclei.geojson "
        "(QuPath: File > Import objects), overlay.png, nuclei.csv and tme.json into --out. With a PAGET model "
        "(paget_s / paget_h) nuclei.geojson also contains the tissue regions as classified annotations.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from ._options import add_inference_arguments, add_model_arguments

    p.add_argument("image", help="PNG, JPEG or TIFF image")
    p.add_argument("--mpp", default=None, metavar="MPP",
                   help="microns per pixel of the image (required unless the file records it)")
    add_model_arguments(p)
    p.add_argument("--instance-source", default=None,
                   help="PAGET-H only: model giving the nucleus instances (default: the config's, i.e. the shipped "
                   "'default' UperHoVer); a model name or .json/.safetensors path, or 'classical'")
    p.add_argument("--out", default=None, help="output folder (default: <image stem>_segtme next to the image)")
    p.add_argument("--cells", action="store_true",
                   help="write QuPath cell objects (nucleus grown by --cell-expansion, with Cell: and Cytoplasm: "
                   "measurements) instead of detections")
    p.add_argument("--cell-expansion", default=None, metavar="UM",
                   help="with --cells: distance in µm a nucleus is grown by, stopping where cells meet "
                   "(QuPath's cell expansion; default 5)")
    p.add_argument("--gzip", action="store_true", help="write nuclei.geojson.gz")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay.png")
    p.add_argument("--overlay-size", default="2048", metavar="PX",
                   help="longest edge of overlay.png in px (a preview; 0 = full size; default 2048)")
    p.add_argument("--overlay-fill", action="store_true", help="fill nuclei with their class colour in overlay.png")
    p.add_argument("--report-annotation", action="store_true",
                   help="also write the TME report as an image-sized QuPath annotation in nuclei.geojson "
                   "(QuPath's 'Resolve hierarchy' then makes it the parent of your annotations)")
    p.add_argument("--narrative", default="template", help="narrative backend for the TME report (default: template)")
    add_inference_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or stage lines")
    from .batch import add_slide_arguments  # whole slides / regions (wsi helper)

    add_slide_arguments(p)
    p.set_defaults(func=run)


def _float_flag(value: str, flag: str, lo: float, hi: float, unit: str) -> float:
    from ..errors import InputError

    try:
        v = float(str(value).strip())
    except ValueError:
        raise InputError(f"{flag} must be a number ({unit}), got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InputError(f"{flag} must be between {lo:g} and {hi:g} {unit}, got {value!r}")
    return v


def check_flags(args: argparse.Namespace) -> dict:
    """Validate every flag before any work; returns the parsed values: "inference" (the one
    ``InferenceOptions``: device, precision, tile, overlap, batch_size), "mpp",
    "cell_expansion", "overlay_size". InputError on the first bad one (one line naming the flag
    and the value)."""
    from ..errors import InputError
    from ..inference.imageio import validate_mpp
    from ._options import inference_options, int_flag

    out = {
        "inference": inference_options(args),
        "mpp": validate_mpp(args.mpp, "--mpp") if args.mpp is not None else None,
        "cell_expansion": 5.0 if args.cell_expansion is None else _float_flag(args.cell_expansion, "--cell-expansion",
                                                                              0.0, 100.0, "µm"),
        "overlay_size": int_flag(args.overlay_size, "--overlay-size", 0),
    }
    if out["overlay_size"] and out["overlay_size"] < 64:
        raise InputError(f"--overlay-size must be 0 (full size) or at least 64 px, got {out['overlay_size']}")
    if args.cell_expansion is not None and not args.cells:
        raise InputError("--cell-expansion applies to cell objects; add --cells")
    return out


def run(args: argparse.Namespace) -> int:
    import logging

    from ..errors import InputError
    from ..export.bundle import ExportOptions, write_outputs
    from ..export.outdir import prepared_folder
    from ..export.overlay import OverlayOptions
    from ..export.provenance import Provenance
    from ..inference.imageio import read_image
    from ..pipeline import analyze, count_tiles
    from ._options import load_model_for
    from ._progress import RunProgress

    log = logging.getLogger("segtme.analyze")
    flags = check_flags(args)
    inf = flags["inference"]
    image_path = Path(args.image)
    if not image_path.exists():
        raise InputError(f"{image_path}: file not found")
    if image_path.is_dir():
        raise InputError(f"{image_path} is a folder, not an image file")
    out = Path(args.out) if args.out else image_path.with_name(image_path.stem + "_segtme")
    prog = RunProgress(enabled=not args.no_progress)

    with prepared_folder(out, "--out") as folder:  # before any slow work: a bad --out fails here
        if folder.stale_removed:
            log.info("removed %d staging folder(s) of interrupted runs in %s", folder.stale_removed, out)
        from .batch import is_slide, run_slide_analysis  # pyramids / huge tiled images / --roi / --annotations

        if args.roi is not None or args.annotations is not None or is_slide(image_path, flags["mpp"]):
            return run_slide_analysis(args, flags, folder, image_path, prog)
        prog.stage(f"reading {image_path}")
        img = read_image(image_path)
        mpp = flags["mpp"] if flags["mpp"] is not None else img.mpp
        if mpp is None:
            raise InputError(img.missing_mpp_message())  # says "not valid" for e.g. Aperio MPP = -0.5
        mpp_source = "user (--mpp)" if flags["mpp"] is not None else (getattr(img, "mpp_source", "") or "file")
        prog.stage(f"{img.size[0]}x{img.size[1]} px at {mpp:g} µm/px ({mpp_source}); loading model {args.model}")
        model = load_model_for(args, inf)
        if args.instance_source is not None:
            from ..paget.zoo import is_paget, paget_mode

            if not (is_paget(model.config) and paget_mode(model.config) == "panoptic"):
                raise InputError(f"--instance-source applies to PAGET-H models only; {model.config.name!r} is not one")

        total = count_tiles(img.rgb.shape, mpp, model.config, inf)
        progress = prog.counter(total, "tile", "segmenting")
        try:
            opt = inf.replace(progress=progress)
            res = analyze(
                img.rgb, mpp, model, opt, narrative_backend=args.narrative,
                output_type="cell" if args.cells else "detection", instance_source=args.instance_source,
            )
        finally:
            prog.close()
        res.nuclei.meta["source"] = str(image_path)
        res.notes[:0] = img.notes
        # a PAGET run's whole-image class map (uint8, 100 MB on a 10 000² px region) is not written:
        # drop it before the export (the tissue annotations and nuclei are in ``res``)
        paget_run, res.paget = res.paget is not None, None
        prog.stage(f"{len(res.nuclei)} nuclei; TME report {'built' if res.report is not None else 'not available'}")

        params = {
            "output_type": "cell" if args.cells else "detection",
            "cell_expansion_um": flags["cell_expansion"] if args.cells else None,
            "tile": inf.tile or model.config.tile_size,
            "overlap": inf.overlap if inf.overlap is not None else model.config.tile_overlap,
            "batch": inf.batch_size, "device": str(model.device), "precision": inf.precision,
            "narrative": args.narrative, "model_mpp": model.config.mpp,
            "instance_source": args.instance_source,
        }
        prov = Provenance.for_run(model, str(image_path.resolve()), mpp, mpp_source, params)
        opts = ExportOptions(
            gzip=args.gzip, cells=args.cells, cell_expansion_um=flags["cell_expansion"], overlay=not args.no_overlay,
            overlay_options=OverlayOptions(max_size=flags["overlay_size"] or None, fill=args.overlay_fill),
            report_annotation=args.report_annotation,
        )
        # all files staged and then moved into place (no partial outputs); overlay in a worker thread
        written = write_outputs(res, folder, img.rgb, options=opts, provenance=prov, status=prog.stage)

    counts: dict[str, int] = {}
    for c in res.nuclei.class_names:
        counts[c] = counts.get(c, 0) + 1
    print(f"{len(res.nuclei)} nuclei ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items())) or 'none'}) "
          f"at {mpp:g} µm/px with model {model.config.name} [{model.source}]")
    if paget_run:
        area = {f["properties"]["classification"]["name"]: f["properties"]["measurements"].get("Area µm^2")
                for f in res.tissue_features}
        print(f"{len(res.tissue_features)} tissue annotation(s) in nuclei.geojson: "
              + (", ".join(f"{k} {v:.0f} µm²" for k, v in area.items() if v is not None) or "none"))
    from ..export.overlay import preview_scale

    for p in written:
        note = ""
        if p.name == "overlay.png":
            f = preview_scale(img.rgb.shape, opts.overlay_options.max_size)
            note = f" (preview at {f:.0%} of full size; --overlay-size 0 for full size)" if f != 1.0 else " (full size)"
        print(f"wrote {p}{note}")
    if res.report is None:
        log.info("TME report not written (segtme.tme.report is not available)")
    return 0
