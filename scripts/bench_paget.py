#!/usr/bin/env python
"""Per-tile time of PAGET-S (MiT-B5 and a small MiT variant) and PAGET-H, in the same run as the
UperHoVer default model, on this machine.

Tile: 384 x 384 px at 20x (0.5 µm/px) — the paper's PAGET-S input; the same tissue area as the
paper's 768 x 768 px at 40x for HoverNet / the teachers (Appendix H). The tile is cut from a real
CoNSeP image (40x, downsampled) when ../shared/data is present, else random pixels.

Timed (wall clock, after ``--warmup`` untimed runs, mean ± std over ``--runs`` repetitions of
``--tiles`` tiles, batch 1, inference mode, fp32 on CPU / bf16 autocast on CUDA):
* PAGET-S forward (SegFormer logits upsampled to 384², softmax + argmax);
* UperHoVer forward + HV-watershed post-processing on the same tile (the instance source);
* PAGET-H = PAGET-S + UperHoVer + per-nucleus majority vote;
* PAGET-S product (``analyze_paget``: map -> tissue annotations + nucleus components + features).
Weights are random (no trained PAGET weights ship): time does not depend on the weights, except
that the number of nuclei a random UperHoVer finds changes the watershed cost; the report says
which UperHoVer model was used ("default" if shipped, else the ``uperhover_resnet18`` preset).

Paper reference: PAGET-S 4.3 ± 0.1 ms per 384² tile on one Tesla V100-SXM2-32GB; HoverNet 403 ms
per 768² tile; PAGET-H 407 ms (Table 7).

    python scripts/bench_paget.py [--variants b5,b0] [--tiles 3] [--runs 3] [--out runs/bench_paget]

Region mode (issue #18 item 4): PAGET-H (shipped ``paget_h``: student + default instances +
mitosis teacher) against the default model, end to end: ``segtme analyze IMAGE --mpp 0.5 --model
M --out TMP --no-progress``, each run a fresh process measured by the OS (CPU seconds user+sys,
wall, peak RSS), interleaved pairs default / PAGET-H after a warm-up pair, on a mosaic of real
MoNuSeg H&E at 0.5 µm/px (``bench_inference.make_mosaic``) or an existing PNG:

    python scripts/bench_paget.py --region 10000 --runs 1 --out docs/bench_paget
    python scripts/bench_paget.py --image m05_10000.png --runs 2 --out DIR

Mitosis mode: the mitosis teacher's ``classify_nuclei`` on N crops in torch and in ONNX Runtime,
in turn in one process (``mitosis_main``):

    python scripts/bench_paget.py --mitosis 32768 --runs 3 [--image m05_4000.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_MS = {"PAGET-S (V100)": 4.3, "HoverNet 768² @40x (V100)": 403.0, "PAGET-H (V100)": 407.0}


def real_tile(size: int = 384) -> tuple[np.ndarray, str]:
    data = Path(os.environ.get("SEGTME_DATA_DIR", REPO.parent / "shared" / "data"))
    p = data / "consep-train" / "images" / "train_1.png"
    if p.is_file():
        from PIL import Image

        im = Image.open(p).convert("RGB").crop((0, 0, 2 * size, 2 * size)).resize((size, size), Image.BILINEAR)
        return np.asarray(im), f"{p.name} (top-left 768² at 40x, resized to {size}² at 20x)"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "random pixels (shared data not found)"


def timeit(fn, tiles: int, runs: int, warmup: int) -> tuple[float, float]:
    """Mean and std (over runs) of the per-tile time in ms."""
    for _ in range(warmup):
        fn()
    per_run = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(tiles):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        per_run.append((time.perf_counter() - t0) * 1000.0 / tiles)
    return statistics.mean(per_run), (statistics.stdev(per_run) if len(per_run) > 1 else 0.0)


# ----------------------------------------------------------------------------- region mode
def _bench_inference():
    """scripts/bench_inference.py as a module (its mosaic, peak-RSS and export helpers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_inference", REPO / "scripts" / "bench_inference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cli_run(png: str, model: str, threads: int) -> dict:
    """One ``segtme analyze PNG --mpp 0.5 --model MODEL --out TMP --no-progress`` in a fresh
    process (the product path: analysis + every output file), measured by the OS for that child
    alone (``os.wait4``): CPU seconds (user + sys, all threads), wall seconds, peak RSS."""
    import re
    import subprocess
    import tempfile

    exe = Path(sys.executable).with_name("segtme")
    with tempfile.TemporaryDirectory() as d:
        cmd = [str(exe), "analyze", png, "--mpp", "0.5", "--model", model, "--out", d, "--no-progress"]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        out = proc.stdout.read()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-2000:]}")
        m = re.search(r"^(\d+) nuclei", out, re.M)
        n_ann = re.search(r"^(\d+) tissue annotation", out, re.M)
    return {"model": model, "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024.0, "n_nuclei": int(m.group(1)) if m else None,
            "tissue_annotations": int(n_ann.group(1)) if n_ann else 0, "load_before": load0,
            "load_after": os.getloadavg(), "cmd": " ".join(cmd[:-3] + ["TMP", "--no-progress"])}


def region_main(args) -> int:
    """PAGET-H vs the default model end to end (``segtme analyze``, each run a fresh process, OS
    accounting of its CPU seconds and peak RSS) on a ``--region``² mosaic of real H&E at 0.5 µm/px
    or on ``--image``; runs interleaved default, PAGET-H, default, PAGET-H, ... (``--runs`` pairs)
    after one untimed warm-up pair on a 512² crop (file cache, imports). Target: PAGET-H's CPU
    seconds and wall seconds <= 1.5x the default's in the same pair, peak RSS <= 2.5 GiB."""
    import tempfile

    from PIL import Image

    from segtme.export.atomic import atomic_write_text

    Image.MAX_IMAGE_PIXELS = None
    rows = []
    models = ["default", args.paget_model]
    with tempfile.TemporaryDirectory() as d:
        if args.image:
            png, src = args.image, args.image
            small = np.asarray(Image.open(png).convert("RGB"))[:512, :512]
        else:
            bi = _bench_inference()
            rgb, src = bi.make_mosaic(args.region, 0.5)
            png = str(Path(d) / "mosaic.png")
            Image.fromarray(rgb).save(png)
            small = rgb[:512, :512]
            del rgb
        warm = str(Path(d) / "warm.png")
        Image.fromarray(np.ascontiguousarray(small)).save(warm)
        for model in models:  # warm-up (not reported)
            _cli_run(warm, model, args.threads)
        for rep in range(args.runs):
            for model in models:
                out = _cli_run(png, model, args.threads)
                out["run"] = rep + 1
                rows.append(out)
                print(json.dumps(out, default=str), flush=True)
    pairs = [(a, b) for a, b in zip(rows[0::2], rows[1::2])]
    ratios = [b["cpu_s"] / a["cpu_s"] for a, b in pairs]
    wall_ratios = [b["wall_s"] / a["wall_s"] for a, b in pairs]
    peak = max(r["peak_rss_mib"] for r in rows if r["model"] == args.paget_model)
    size = Image.open(png).size if args.image else (args.region, args.region)
    lines = [f"# PAGET-H ({args.paget_model}) vs default, {size[0]}x{size[1]} px at 0.5 µm/px, `segtme analyze` "
             f"end to end (analysis + all outputs), fresh process per run, interleaved pairs", "",
             "| pair | model | CPU s (user+sys) | wall s | peak RSS MiB | nuclei | load before → after |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['model']} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['n_nuclei']} | {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} |")
    lines += ["", "PAGET-H / default CPU seconds per pair: " + ", ".join(f"**{x:.2f}x**" for x in ratios)
              + "; wall seconds: " + ", ".join(f"**{x:.2f}x**" for x in wall_ratios)
              + " (target <= 1.5x); PAGET-H peak RSS " f"**{peak / 1024:.2f} GiB** (target <= 2.5 GiB)", "",
              f"input: {src}; machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {args.threads} threads per run"]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench_paget_region.md", text + "\n")
    atomic_write_text(out / "bench_paget_region.json", json.dumps({"rows": rows, "cpu_ratios": ratios, "wall_ratios": wall_ratios, "peak_mib": peak},
                                                                  indent=1, default=str))
    return 0


def mitosis_main(args) -> int:
    """The mitosis teacher's forward on ``--mitosis`` N nucleus crops (``mitosis.detect.
    classify_nuclei``: crop gathering + forward + sigmoid) in each runtime, in this process, in
    turn (``--runs`` repeats each, after one untimed call): the torch inference copy
    (``SEGTME_RUNTIME=torch``: BatchNorm folded, channels_last, bf16 autocast where the CPU has
    native bf16) and ONNX Runtime (``SEGTME_RUNTIME=onnx``: ``weights/mitosis.onnx``, fp32).
    Centroids: a regular grid over ``--image`` (or a 2000² MoNuSeg mosaic at 0.5 µm/px). Prints
    CPU s (process time) and wall s per call and the largest difference of the probabilities."""
    import time

    from segtme.mitosis.detect import classify_nuclei
    from segtme.models.registry import load_model

    if args.image:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        rgb = np.asarray(Image.open(args.image).convert("RGB"))
    else:
        rgb, _ = _bench_inference().make_mosaic(2000, 0.5)
    n = int(args.mitosis)
    h, w = rgb.shape[:2]
    k = int(np.ceil(np.sqrt(n)))
    gx, gy = np.meshgrid(np.linspace(20, w - 20, k), np.linspace(20, h - 20, k))
    xy = np.stack([gx.ravel(), gy.ravel()], 1)[:n]
    results, lines = {}, [f"# mitosis teacher, {n} crops of a {w}x{h} px image at 0.5 µm/px, "
                          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "",
                          "| runtime | module | CPU s per call (min / median) | wall s per call (min / median) |",
                          "|---|---|---|---|"]
    for rt in ("torch", "onnx"):
        os.environ["SEGTME_RUNTIME"] = rt
        lm = load_model("mitosis", "cpu")
        classify_nuclei(lm, rgb, 0.5, xy[:256])
        cpu, wall = [], []
        for _ in range(max(1, args.runs)):
            c0, w0 = time.process_time(), time.perf_counter()
            results[rt] = classify_nuclei(lm, rgb, 0.5, xy)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        lines.append(f"| {rt} | {type(lm.module).__name__} | {min(cpu):.2f} / {float(np.median(cpu)):.2f} | "
                     f"{min(wall):.2f} / {float(np.median(wall)):.2f} |")
    os.environ.pop("SEGTME_RUNTIME", None)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(results["torch"], results["onnx"]))
    lines += ["", f"max |p_torch - p_onnx| = {diff:.2e} (p_mitosis and p_atypical)"]
    print("\n".join(lines))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--region", type=int, default=0,
                    help="region mode: PAGET-H vs default end to end on a REGION² mosaic at 0.5 µm/px (e.g. 10000)")
    ap.add_argument("--paget-model", default="paget_h", help="region mode: the PAGET model (default paget_h)")
    ap.add_argument("--threads", type=int, default=2, help="region mode: torch threads per run")
    ap.add_argument("--image", default=None, help="region mode: an existing 0.5 µm/px PNG instead of the mosaic")
    ap.add_argument("--variants", default="b5,b0", help="MiT variants of PAGET-S to time (b0..b5)")
    ap.add_argument("--tiles", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_paget"))
    ap.add_argument("--mitosis", type=int, default=0, metavar="N",
                    help="time the mitosis teacher on N crops in torch and in ONNX Runtime (with --image: its pixels)")
    args = ap.parse_args()
    if args.mitosis:
        return mitosis_main(args)
    if args.region or args.image:
        return region_main(args)

    from segtme.export.atomic import atomic_write_text
    from segtme.inference.engine import forward_tiles
    from segtme.inference.postprocess import PostprocessParams, hv_watershed
    from segtme.models import load_model, presets
    from segtme.models.registry import shipped_models
    from segtme.paget.product import analyze_paget, majority_nucleus_class

    rgb, tile_src = real_tile(384)
    uh_name = "default" if "default" in shipped_models() else "uperhover_resnet18"
    uh = load_model(uh_name, args.device, allow_random=True)
    dev = uh.device
    rows: list[dict] = []

    def uh_instances() -> np.ndarray:
        o = forward_tiles(uh, [rgb], 1)[0]
        return hv_watershed(1.0 - o["prob"][0], o["hv"], PostprocessParams.from_mapping(uh.config.postprocess))

    m, s = timeit(uh_instances, args.tiles, args.runs, args.warmup)
    rows.append({"pipeline": f"UperHoVer ({uh_name}: {uh.config.backbone}, {uh.source}) forward + HV watershed",
                 "input": "384² @ 0.5 µm/px", "ms_mean": m, "ms_std": s})
    inst = uh_instances()

    for v in [x.strip() for x in args.variants.split(",") if x.strip()]:
        name = "paget_s" if v == "b5" else f"paget_s_{v}"
        cfg = presets().get(name) or presets()["paget_s"].replace(name=f"paget_s_{v}", extra={"variant": v, "mode": "semantic"})
        lm = load_model(cfg, args.device, allow_random=True)
        nparam = sum(p.numel() for p in lm.module.parameters()) / 1e6

        def paget_s() -> np.ndarray:
            o = forward_tiles(lm, [rgb], 1)[0]
            return o["prob"].argmax(0)

        m_s, s_s = timeit(paget_s, args.tiles, args.runs, args.warmup)
        rows.append({"pipeline": f"PAGET-S MiT-{v.upper()} ({nparam:.1f} M params) forward", "input": "384² @ 0.5 µm/px",
                     "ms_mean": m_s, "ms_std": s_s})

        def paget_h() -> np.ndarray:
            o = forward_tiles(lm, [rgb], 1)[0]
            ins = uh_instances()
            return majority_nucleus_class(ins, o["prob"].argmax(0), o["prob"])[0]

        m_h, s_h = timeit(paget_h, args.tiles, args.runs, args.warmup)
        rows.append({"pipeline": f"PAGET-H MiT-{v.upper()} (PAGET-S + UperHoVer {uh_name} + majority vote)",
                     "input": "384² @ 0.5 µm/px", "ms_mean": m_h, "ms_std": s_h})

        def product() -> None:
            analyze_paget(rgb, 0.5, lm, mode="semantic", batch_size=1)

        m_p, s_p = timeit(product, args.tiles, args.runs, args.warmup)
        rows.append({"pipeline": f"PAGET-S MiT-{v.upper()} product (analyze_paget: annotations + nuclei + features)",
                     "input": "384² @ 0.5 µm/px", "ms_mean": m_p, "ms_std": s_p})
        del lm

    env = {
        "device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None, "python": sys.version.split()[0],
        "tile": tile_src, "uperhover_model": uh_name, "nuclei_in_tile": int(inst.max()),
        "tiles": args.tiles, "runs": args.runs, "warmup": args.warmup,
    }
    w = max(len(r["pipeline"]) for r in rows)
    lines = [f"{'pipeline':<{w}}  {'input':<16} {'ms/tile':>10}  {'± std':>8}"]
    lines += [f"{r['pipeline']:<{w}}  {r['input']:<16} {r['ms_mean']:>10.1f}  {r['ms_std']:>8.1f}" for r in rows]
    lines.append("")
    lines.append("paper (Table 7, Tesla V100-SXM2-32GB): " + ", ".join(f"{k} {v:g} ms" for k, v in PAPER_MS.items()))
    lines.append(f"this machine: {env['device']}, {env['cores']} cores (shared; load {env['loadavg']}), torch {env['torch']}, "
                 f"{env['threads']} threads; tile: {tile_src}; UperHoVer = {uh_name}")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench_paget.txt", text + "\n")
    atomic_write_text(out / "bench_paget.json", json.dumps({"rows": rows, "env": env, "paper_ms": PAPER_MS}, indent=2, default=str))
    print(f"saved {out / 'bench_paget.txt'} and bench_paget.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
