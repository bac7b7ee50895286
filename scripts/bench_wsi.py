#!/usr/bin/env python
"""Whole-slide benchmark: synthetic 40x pyramidal JPEG slides of real H&E (``io.synthetic``),
analysed end to end with ``segtme batch`` machinery, one run, one table.

Measured (each configuration in its own child process, so peak RSS is that run's alone):

1. ``huge``: a ``--size``² px (default 100 000²) slide at 0.25 µm/px, mostly glass (``--huge-cells``
   4096² px tissue cells): CLI-equivalent ``process_job`` — wall time, tissue-detection time,
   s/mm² of tissue, peak RSS. ``huge-ome``: the same slide as OME-TIFF through the Python API
   (``batch.runner.analyze_slide_to``).
2. ``sparse`` vs ``full``: a ``--ratio-size``² slide with ``--fraction`` (default 0.2) tissue, and
   the same slide fully covered: time ratio (target <= 0.3 for 20 %).
3. ``local`` vs ``ray``: a cohort of ``--cohort`` sparse slides, in-process vs a local Ray cluster
   with ``--workers`` actors (1 CPU each).

Usage: ``.venv/bin/python scripts/bench_wsi.py [--size 100000] [--fraction 0.2] [--no-ray]``
(writes slides and outputs under ``--work``, default a temporary folder, removed at the end;
never commit them). Prints a Markdown table and writes JSON to ``--json`` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _he(n: int = 8):
    import numpy as np
    from PIL import Image

    root = Path(os.environ.get("SEGTME_DATA_DIR", REPO.parent / "shared" / "data")) / "monuseg-train" / "images"
    files = sorted(root.glob("*.png"))[:n]
    if not files:
        sys.exit(f"no H&E images under {root} (set SEGTME_DATA_DIR)")
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def build(path: Path, size: int, fraction: float | None, cells: int | None, flavour: str = "aperio", seed: int = 0) -> dict:
    from segtme.io.synthetic import tissue_patches, write_slide

    ims = _he()
    t0 = time.perf_counter()
    if fraction is None:
        fraction = cells * 4096 * 4096 / (size * size)
    patches = tissue_patches(ims, (size, size), fraction, seed=seed)
    write_slide(path, (size, size), patches, 0.25, flavour=flavour)
    tissue_mm2 = sum(p[2].shape[0] * p[2].shape[1] for p in patches) * 0.25**2 / 1e6
    return {"path": str(path), "size": size, "tissue_mm2_built": tissue_mm2, "build_s": time.perf_counter() - t0,
            "file_mb": path.stat().st_size / 1e6}


# --------------------------------------------------------------------------- child runs


def child(args) -> None:
    """One configuration in this process; prints one JSON line."""
    from segtme.batch.runner import analyze_slide_to, collect_jobs, prepare_out_root, run_local
    from segtme.batch.slide import SlideOptions
    from segtme.models.registry import load_model

    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    t0 = time.perf_counter()
    model = load_model(args.model, "cpu")
    t_load = time.perf_counter() - t0
    c1 = cpu()
    out = prepare_out_root(args.child_out)
    t1 = time.perf_counter()
    res: dict = {}
    if args.child == "local":
        rs = run_local(collect_jobs(args.child_inputs), out, model, SlideOptions(detect_tissue=not args.no_tissue))
        res["status"] = [r.status for r in rs]
        sums = [json.loads((out / r.name / "summary.json").read_text()) for r in rs if r.status == "done"]
    elif args.child == "api":
        r = analyze_slide_to(args.child_inputs[0], out / "api", model, detect_tissue=not args.no_tissue)
        sums = [r.summary()]
    else:
        from segtme.batch.ray_exec import RayOptions, run_ray

        # the actors load the model themselves (spec string)
        from segtme.inference.options import InferenceOptions

        rs = run_ray(collect_jobs(args.child_inputs), out, args.model,
                     SlideOptions(detect_tissue=not args.no_tissue, inference=InferenceOptions(device="cpu")),
                     RayOptions(workers=args.workers, cpus_per_worker=1.0))
        res["status"] = [r.status for r in rs]
        sums = [json.loads((out / r.name / "summary.json").read_text()) for r in rs if r.status == "done"]
    if "status" in res:
        res["reasons"] = [r.reason for r in rs if r.status == "failed"]
    res.update(
        wall_s=time.perf_counter() - t1, cpu_s=cpu() - c1, model_load_s=t_load,
        tissue_s=sum(s["seconds_tissue"] for s in sums), slide_s=sum(s["seconds"] for s in sums),
        tissue_mm2=sum(s["tissue_mm2"] for s in sums), tiles=sum(s["tiles_run"] for s in sums),
        nuclei=sum(u["n_nuclei"] for s in sums for u in s["units"]),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print("RESULT " + json.dumps(res), flush=True)


def run_child(kind: str, inputs: list[str], out: Path, args, no_tissue: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--child-out", str(out), "--model", args.model,
           "--workers", str(args.workers), "--child-inputs", *inputs] + (["--no-tissue"] if no_tissue else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"child {kind} failed ({p.returncode}):\n{p.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--huge-cells", type=int, default=1)
    ap.add_argument("--ratio-size", type=int, default=12288)
    ap.add_argument("--fraction", type=float, default=2 / 9)
    ap.add_argument("--cohort", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None, help="comma list of: huge,huge-ome,ratio,cohort")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-inputs", nargs="*", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-tissue", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    only = set(args.only.split(",")) if args.only else {"huge", "huge-ome", "ratio", "cohort"}
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_wsi_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    try:
        if "huge" in only or "huge-ome" in only:
            built = build(work / "huge.svs", args.size, None, args.huge_cells)
            print(f"built {built}", file=sys.stderr)
            if "huge" in only:
                rows["huge"] = {**run_child("local", [built["path"]], work / "o_huge", args), "built": built}
            if "huge-ome" in only:
                ob = build(work / "huge.ome.tif", args.size, None, args.huge_cells, flavour="ome")
                rows["huge-ome"] = {**run_child("api", [ob["path"]], work / "o_ome", args), "built": ob}
                (work / "huge.ome.tif").unlink()
            (work / "huge.svs").unlink(missing_ok=True)
        if "ratio" in only or "cohort" in only:
            sparse = [build(work / f"sparse{i}.svs", args.ratio_size, args.fraction, None, seed=i)
                      for i in range(max(1, args.cohort))]
            if "ratio" in only:
                full = build(work / "full.svs", args.ratio_size, 1.0, None)
                rows["sparse"] = {**run_child("local", [sparse[0]["path"]], work / "o_sparse", args), "built": sparse[0]}
                rows["full"] = {**run_child("local", [full["path"]], work / "o_full", args), "built": full}
            if "cohort" in only:
                paths = [s["path"] for s in sparse]
                rows["cohort-local"] = run_child("local", paths, work / "o_cl", args)
                if not args.no_ray:
                    rows["cohort-ray"] = run_child("ray", paths, work / "o_cr", args)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def print_table(rows: dict, args) -> None:
    print("| run | slide | tissue mm² | wall s | CPU s (this process) | tissue detection s | s/mm² tissue (wall) | tiles | nuclei | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        b = r.get("built", {})
        mm2 = r["tissue_mm2"]
        slide = f"{b['size']}² px, {b['file_mb']:.0f} MB" if b else f"{args.cohort} x {args.ratio_size}² px"
        print(f"| {k} | {slide} | {mm2:.2f} | {r['wall_s']:.1f} | {r.get('cpu_s', float('nan')):.0f} | {r['tissue_s']:.2f} | "
              f"{(r['wall_s'] - r['tissue_s']) / mm2 if mm2 else float('nan'):.2f} | {r['tiles']} | {r['nuclei']} | "
              f"{r['peak_rss_mib']:.0f} |")
    if "sparse" in rows and "full" in rows:
        print(f"\nsparse / full: wall {rows['sparse']['wall_s'] / rows['full']['wall_s']:.3f}, "
              f"CPU {rows['sparse'].get('cpu_s', float('nan')) / rows['full'].get('cpu_s', float('nan')):.3f}, "
              f"tiles {rows['sparse']['tiles'] / rows['full']['tiles']:.3f} "
              f"(tissue {rows['sparse']['tissue_mm2']:.2f} vs {rows['full']['tissue_mm2']:.2f} mm²)")
    if "cohort-local" in rows and "cohort-ray" in rows:
        print(f"cohort local / ray ({args.workers} workers) wall: {rows['cohort-local']['wall_s']:.1f} s / "
              f"{rows['cohort-ray']['wall_s']:.1f} s (ray includes cluster start)")


if __name__ == "__main__":
    main()
