"""`segtme batch INPUT... --out DIR`: whole slides and cohorts, resumable, locally or on Ray.

Per slide ``DIR/<slide>/``: nuclei.geojson.gz (QuPath detections + one annotation per analysed
unit carrying its TME measurements), nuclei.csv, tissue.geojson + tissue.png (the tissue
mask), report-<unit>.json (TME report per unit) and summary.json (written last; marks the
folder complete). In DIR: batch_report.csv (every slide of this run: done / skipped / failed
and why) and cohort.csv + cohort.parquet (one row per slide and unit). Exit status 0 when every
slide is done or already complete, 1 when any failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ._options import add_inference_arguments, add_model_arguments

    p = sub.add_parser(
        "batch",
        help="analyse whole slides / cohorts (folders, globs, manifest CSV); resumable; optional Ray",
        description="Analyse whole slides (SVS, NDPI, MRXS, SCN, OME-TIFF, tiled TIFF, PNG/JPEG) into one folder "
        "per slide under --out, skipping background (tissue detection), with a failure report and a cohort "
        "table. Re-running skips complete slides; an interrupted slide is redone. --ray runs one slide per "
        "Ray task (local cluster, or --ray-address to join one).",
        epilog="examples:\n  segtme batch slides/ --out cohort_out\n  segtme batch 'slides/*.svs' manifest.csv --out cohort_out --ray --workers 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="slides, folders, glob patterns or a manifest CSV (columns: path[, mpp, annotations])")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--mpp", default=None, help="level-0 µm/px for slides without (valid) resolution metadata")
    p.add_argument("--roi", default=None, help="analyse only x,y,w,h (level-0 px) of every slide")
    p.add_argument("--annotations", default=None,
                   help="QuPath GeoJSON of polygon annotations (level-0 px): one TME report per annotation")
    add_model_arguments(p)
    add_inference_arguments(p)
    p.add_argument("--no-tissue-detection", action="store_true", help="analyse every pixel (no background skipping)")
    p.add_argument("--min-tissue-mm2", type=float, default=None,
                   help="smallest tissue piece kept by tissue detection, mm² (default 0.01)")
    p.add_argument("--narrative", default="template", help="narrative backend of the TME reports (default: template)")
    p.add_argument("--no-csv", action="store_true", help="do not write nuclei.csv")
    p.add_argument("--no-gzip", action="store_true", help="write nuclei.geojson uncompressed")
    p.add_argument("--force", action="store_true", help="redo slides that are already complete")
    p.add_argument("--ray", action="store_true", help="run on Ray (starts a local cluster unless --ray-address)")
    p.add_argument("--ray-address", default=None, help="join an existing Ray cluster (e.g. ray://head:10001 or auto)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors, each holding one model (default 2)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per Ray actor (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray actor (0 = CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


# the batch parser defines --roi / --annotations / --no-tissue-detection itself (above)


def _options(args: argparse.Namespace):
    """The run's one ``SlideOptions`` (its ``inference`` from the shared model/tile flags), every
    flag checked before any work."""
    from ..errors import InputError
    from ..io.image import validate_mpp
    from ..io.regions import parse_roi, read_annotations
    from ..io.tissue import TissueParams
    from ..batch.slide import SlideOptions
    from ._options import inference_options

    inf = inference_options(args)
    mpp = validate_mpp(args.mpp, "--mpp") if args.mpp is not None else None
    roi = parse_roi(args.roi) if args.roi is not None else None
    if args.annotations is not None:
        read_annotations(args.annotations)  # validated now, parsed again per slide
    if args.workers <= 0:
        raise InputError(f"--workers must be a positive integer, got {args.workers}")
    if args.gpus_per_worker < 0 or args.cpus_per_worker <= 0:
        raise InputError("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")
    tissue = TissueParams()
    if args.min_tissue_mm2 is not None:
        if not args.min_tissue_mm2 >= 0:
            raise InputError(f"--min-tissue-mm2 must be >= 0, got {args.min_tissue_mm2}")
        tissue = TissueParams(min_tissue_um2=args.min_tissue_mm2 * 1e6)
    return SlideOptions(mpp=mpp, roi=roi, annotations=args.annotations, detect_tissue=not args.no_tissue_detection,
                        tissue=tissue, gzip=not args.no_gzip, write_csv=not args.no_csv, narrative_backend=args.narrative,
                        inference=inf)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..batch.runner import (Progress, collect_jobs, cohort_rows, prepare_out_root, run_local, write_batch_report,
                                write_cohort)

    opts = _options(args)
    jobs = collect_jobs(args.inputs)
    out_root = prepare_out_root(args.out)
    progress = Progress(len(jobs), enabled=not args.no_progress)
    done: list = []

    def on_result(r) -> None:
        done.append(r)
        write_batch_report(out_root, done)  # kept current: a crash still leaves a report

    use_ray = args.ray or args.ray_address is not None
    from ..export.outdir import signals_cleanup

    with signals_cleanup(None):
        if use_ray:
            from ..batch.ray_exec import RayOptions, run_ray

            results = run_ray(jobs, out_root, args.model, opts,
                              RayOptions(address=args.ray_address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                                         gpus_per_worker=args.gpus_per_worker, weights=args.weights),
                              force=args.force, progress=progress, on_result=on_result)
        else:
            from ._options import load_model_for

            model = load_model_for(args, opts.inference)
            results = run_local(jobs, out_root, model, opts, force=args.force, progress=progress, on_result=on_result)
    write_batch_report(out_root, results)
    rows = cohort_rows(out_root, [r.name for r in results])
    csv_path, pq_path, note = write_cohort(out_root, rows)
    failed = [r for r in results if r.status == "failed"]
    n_done = sum(r.status == "done" for r in results)
    n_skip = sum(r.status == "skipped" for r in results)
    print(f"{n_done} done, {n_skip} already complete, {len(failed)} failed; cohort: {csv_path}"
          + (f" + {pq_path.name}" if pq_path else "") + f"; report: {out_root / 'batch_report.csv'}")
    if note:
        print(f"note: {note}", file=sys.stderr)
    for r in failed:
        print(f"failed: {r.path}: {r.reason}", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------- `segtme analyze SLIDE`


def add_slide_arguments(p: argparse.ArgumentParser) -> None:
    """The region options `segtme analyze` shares with `segtme batch`."""
    p.add_argument("--roi", default=None, metavar="X,Y,W,H",
                   help="analyse only this box (level-0 px); implies the whole-slide path")
    p.add_argument("--annotations", default=None, metavar="FILE.geojson",
                   help="QuPath-exported polygon annotations (level-0 px): analyse inside each, one TME report each")
    p.add_argument("--no-tissue-detection", action="store_true",
                   help="whole-slide path: analyse every pixel (no background skipping)")


def is_slide(path, mpp: float | None) -> bool:
    """True for inputs that go through the whole-slide path: pyramids and tiled images too large
    to decode at once (more than $SEGTME_MAX_PIXELS). Unreadable files return False (the normal
    reader then reports why)."""
    from ..errors import SegTMEError
    from ..io.image import max_pixels_default
    from pathlib import Path

    from ..io.source import ArraySource, open_source, sniff

    try:
        if sniff(Path(path)) in ("png", "jpeg"):
            return False  # decoded whole by the image path; never a pyramid
        src = open_source(path, mpp)
    except (SegTMEError, OSError):
        return False
    try:
        if isinstance(src, ArraySource):
            return False
        W, H = src.size
        return len(src.level_sizes) > 1 or W * H > max_pixels_default()
    finally:
        src.close()


def run_slide_analysis(args: argparse.Namespace, flags: dict, folder, image_path, prog) -> int:
    """`segtme analyze` on a whole slide (or with --roi / --annotations): tissue detection, lazy
    pyramid reading, streamed outputs into the staged --out folder (published when complete):
    nuclei.geojson(.gz), nuclei.csv, tissue.geojson, tissue.png, report-<unit>.json, summary.json."""
    from ..batch.slide import SlideOptions, analyze_slide
    from ..errors import InputError
    from ._options import load_model_for
    from ..io.regions import parse_roi, read_annotations
    from ..io.source import open_source

    if getattr(args, "cells", False):
        raise InputError("--cells is not available on whole slides yet (detections are written); drop --cells or use --roi "
                         "on a region small enough to export as an image")
    roi = parse_roi(args.roi) if args.roi is not None else None
    ann = read_annotations(args.annotations) if args.annotations is not None else None
    src = open_source(image_path, flags.get("mpp"))  # MPP / file errors before the model loads
    try:
        prog.stage(f"{src.size[0]}x{src.size[1]} px slide at {src.mpp:g} µm/px ({src.mpp_source}), "
                   f"{len(src.level_sizes)} level(s); loading model {args.model}")
        inf = flags["inference"]
        model = load_model_for(args, inf)
        opts = SlideOptions(mpp=flags.get("mpp"), roi=roi, detect_tissue=not args.no_tissue_detection,
                            gzip=True, narrative_backend=args.narrative, inference=inf)
        def progress(done: int, total: int) -> None:
            if not args.no_progress and (done % 50 == 0):
                prog.stage(f"{done} tiles")

        res = analyze_slide(src, model, folder.stage, opts, progress=progress, annotations=ann)
    finally:
        src.close()
    written = folder.publish(res.files)
    for u in res.units:
        print(f"{u.name}: {u.n_nuclei} nuclei in {u.tissue_mm2:.3f} mm² tissue")
    print(f"slide {res.size[0]}x{res.size[1]} px, tissue {res.tissue_mm2:.3f} mm² ({res.tissue_fraction:.1%}), "
          f"{res.tiles_run} tiles, {res.seconds:.1f} s, model {res.model}")
    for p in written:
        print(f"wrote {p}")
    return 0
