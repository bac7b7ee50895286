#!/usr/bin/env python
"""Inference speed benchmark: the default model through the real product path, the classical
baseline on the same image, and the full UNI2-UperHoVer architecture's forward time per tile.

**Headline (``--mode 40x``, the default): ``segtme analyze`` as a user runs it on 40x input**
(0.25 µm/px: a 4000² px region = 1 mm² of real MoNuSeg tiles, and one 1000² px MoNuSeg image),
each run a fresh ``segtme analyze IMAGE --mpp 0.25 --out DIR`` process, split per stage —
start-up (process start to the first pixel read), read, resample, model forward, the rest of
the engine (tile blending, cache), post-processing (maps -> instances), features (nucleus
measurements), TME report, each export (GeoJSON, CSV, overlay) — plus wall time, marginal
s/mm² (the 4000² run minus the 1000² run, per mm² of difference) and peak RSS. With ``--base
DIR`` (e.g. a ``git worktree`` of an older commit) the same runs use that code (its
``python/`` on PYTHONPATH) in the same session, interleaved, for figures side by side.

    git worktree add /work/scratch/base <old-commit>
    python scripts/bench_inference.py --base /work/scratch/base --repeats 2

**Working-resolution mode (``--mode working``)**, one run measures, in this order (so the
ratios share the same machine load):

1. **Default model, end to end** (``segtme.pipeline.analyze`` + ``export.bundle.write_outputs``,
   what ``segtme analyze`` runs), on a real-H&E mosaic of ``--region`` x ``--region`` px at the
   model's working MPP, split into read (``imageio.read_image`` of a PNG), model
   (``engine.GridPredictor.predict`` incl. resampling and tile blending), post-processing
   (``postprocess.hv_watershed`` + ``classify_instances``), features (``build_nuclei_table``
   measurements + TME report) and export. Post-processing and features run in a worker thread
   during the model stage (product default), so stage times overlap. Reported as megapixels
   per second (working px), seconds per mm² of tissue, and peak RSS of a fresh child process
   (one child per repeat, so the peak belongs to that run alone). Then the **engine baseline**:
   the same with fp32 and sequential post-processing, for a ratio measured in the same run.
2. **Classical baseline** (``models.classical``) on the same mosaic: detection + the same
   nuclei-table measurements.
3. **UNI2-UperHoVer** (the paper's ViT-G/14 + two UperNet heads of width 768) forward time per
   224x224 tile with **random weights** (the architecture's cost; its weights are gated and not
   here), and the default model's forward time per 224x224 tile for comparison.

The mosaic is built from the real H&E of ``$SEGTME_DATA_DIR`` (MoNuSeg training images, resampled
to the working MPP, flipped and tiled), or from the bundled sample when that data is missing.
The machine may be shared: each measurement is repeated (``--repeats``) and the minimum and the
median are reported with the load average before and after.

    python scripts/bench_inference.py --mode working                       # 4000 px region, 2 repeats
    python scripts/bench_inference.py --mode working --region 10000 --repeats 1 --write-docs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("read", "model", "postprocess", "features", "export")


# ----------------------------------------------------------------------------- mosaic
def make_mosaic(region: int, work_mpp: float, seed: int = 0) -> tuple[np.ndarray, str]:
    """A ``region`` x ``region`` px RGB mosaic of real H&E at ``work_mpp`` µm/px."""
    from PIL import Image

    from segtme.inference.engine import resample

    data = Path(os.environ.get("SEGTME_DATA_DIR", REPO.parent / "shared" / "data"))
    tiles: list[np.ndarray] = []
    src = ""
    idx = data / "monuseg-train" / "index.json"
    if idx.is_file():
        items = json.loads(idx.read_text())
        items = items["items"] if isinstance(items, dict) else items
        for it in items:
            rgb = np.asarray(Image.open(data / "monuseg-train" / it["image"]).convert("RGB"))
            m = float(it.get("mpp") or 0.25)
            tiles.append(resample(rgb, m / work_mpp))
        src = f"MoNuSeg training images ({len(tiles)}) from {data}, resampled to {work_mpp} µm/px"
    else:
        p = REPO / "python" / "segtme" / "samples" / "he_tcia_stardist.jpg"
        tiles.append(np.asarray(Image.open(p).convert("RGB")))
        src = f"bundled sample {p.name} (treated as {work_mpp} µm/px)"
    # crop every tile to the smallest common size so the mosaic has no gaps
    th = min(t.shape[0] for t in tiles)
    tw = min(t.shape[1] for t in tiles)
    tiles = [t[:th, :tw] for t in tiles]
    rng = np.random.default_rng(seed)
    out = np.zeros((region, region, 3), np.uint8)
    y = 0
    while y < region:
        x = 0
        row_h = 0
        while x < region:
            t = tiles[int(rng.integers(len(tiles)))]
            if rng.random() < 0.5:
                t = t[:, ::-1]
            if rng.random() < 0.5:
                t = t[::-1]
            h, w = min(t.shape[0], region - y), min(t.shape[1], region - x)
            out[y : y + h, x : x + w] = t[:h, :w]
            x += w
            row_h = max(row_h, h)
        y += row_h
    return out, src


# ----------------------------------------------------------------------------- timing
class StageTimer:
    """Accumulates wall time per stage by wrapping the product functions in their modules."""

    def __init__(self) -> None:
        self.t = {k: 0.0 for k in STAGES}
        self._patched: list[tuple[object, str, object]] = []

    def wrap(self, module: object, name: str, stage: str) -> None:
        fn = getattr(module, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[stage] += time.perf_counter() - t0

        self._patched.append((module, name, fn))
        setattr(module, name, timed)

    def restore(self) -> None:
        for module, name, fn in reversed(self._patched):
            setattr(module, name, fn)
        self._patched.clear()

    @contextmanager
    def stage(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[stage] += time.perf_counter() - t0


def _peak_rss_mib() -> float:
    """Peak RSS of this process in MiB: Linux ``VmHWM`` (the process's own high-water mark, which
    ``_reset_peak_rss`` can reset), else ``getrusage`` (which on Linux also counts the parent's
    RSS at fork time, inflating a spawned child's figure)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs`` 5); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child_default(png: str, work_mpp: float, threads: int, precision: str = "auto", pipelined: bool = True,
                   chunk: int | None = None, halo: int | None = None, *, q: mp.Queue) -> None:
    """One end-to-end run of the product path in a fresh process (clean peak memory).
    precision / pipelined: the engine settings (``LoadedModel.precision``, ``segment_image``'s
    worker-thread post-processing); the product defaults are "auto" / True."""
    import segtme  # noqa: F401  (first, as the CLI does: sets OMP_WAIT_POLICY before torch loads)
    import torch

    torch.set_num_threads(threads)
    import segtme.inference.engine as engine
    import segtme.inference.postprocess as post
    import segtme.pipeline as pipeline
    from segtme.export.bundle import write_outputs
    from segtme.inference import imageio
    from segtme.models import load_model

    model = load_model("default", "cpu", precision=precision)
    if not pipelined:
        import functools

        pipeline.segment_image = functools.partial(pipeline.segment_image, pipelined=False)
    base_rss = _peak_rss_mib()
    st = StageTimer()
    read_for_overlay = imageio.read_image  # unwrapped: the overlay's re-read counts as export only
    st.wrap(imageio, "read_image", "read")
    st.wrap(engine.GridPredictor, "predict", "model")
    st.wrap(post, "hv_watershed", "postprocess")
    st.wrap(post, "classify_instances", "postprocess")
    st.wrap(pipeline, "build_nuclei_table", "features")
    st.wrap(pipeline, "build_report", "features")
    t0 = time.perf_counter()
    res = pipeline.analyze(png, mpp=work_mpp, model=model, chunk_size=chunk, halo=halo)
    peak_analyze = _peak_rss_mib()
    can_reset = _reset_peak_rss()
    with tempfile.TemporaryDirectory() as d, st.stage("export"):
        rgb = read_for_overlay(png).rgb  # `segtme analyze` keeps the image it read; a re-read here
        write_outputs(res, d, rgb)  # exactly what `segtme analyze` writes (GeoJSON, overlay, CSV, TME JSON)
    total = time.perf_counter() - t0
    st.restore()
    peak_export = _peak_rss_mib()
    from segtme.models.registry import resolve_precision

    q.put({"total": total, **st.t, "precision": resolve_precision(precision, model.device), "pipelined": pipelined, "n_nuclei": len(res.nuclei), "peak_rss_mib": max(peak_analyze, peak_export),
           "peak_analyze_mib": peak_analyze, "peak_export_mib": peak_export if can_reset else None,
           "base_rss_mib": base_rss})


def _child_classical(png: str, work_mpp: float, *, q: mp.Queue) -> None:
    from segtme.inference import imageio
    from segtme.inference.nuclei import build_nuclei_table
    from segtme.models import load_model

    model = load_model("classical", "cpu")
    base_rss = _peak_rss_mib()
    t0 = time.perf_counter()
    rgb = imageio.read_image(png).rgb
    t1 = time.perf_counter()
    inst, cls, prob = model.module.predict_instances(rgb, work_mpp)
    t2 = time.perf_counter()
    table = build_nuclei_table(inst, model.config.tax, class_id=cls, class_prob=prob, rgb=rgb, mpp=work_mpp)
    t3 = time.perf_counter()
    q.put({"total": t3 - t0, "read": t1 - t0, "detect": t2 - t1, "features": t3 - t2, "n_nuclei": len(table),
           "peak_rss_mib": _peak_rss_mib(), "base_rss_mib": base_rss})


def _run_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=args, kwargs={"q": q})
    p.start()
    out = q.get()
    p.join()
    return out


def tile_forward_seconds(preset_or_name: str, n: int, threads: int, tile: int = 224, random_weights: bool = False) -> list[float]:
    """Seconds per forward of one tile x tile tile (batch 1, channels_last, inference mode)."""
    import torch

    from segtme.models import create_model, load_model, resolve_config

    torch.set_num_threads(threads)
    if random_weights:
        cfg, _ = resolve_config(preset_or_name)
        module = create_model(cfg).eval()
    else:
        module = load_model(preset_or_name, "cpu").module.eval()
    module = module.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, tile, tile).contiguous(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        module(x)  # warm-up
        for _ in range(n):
            t0 = time.perf_counter()
            module(x)
            out.append(time.perf_counter() - t0)
    del module
    return out


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
    }


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- 40x, as the user runs it
#: stage -> (module, attribute path) candidates; the current code's and older code's names both
#: appear (a missing one is skipped), so one child serves either tree
STAGE_TARGETS = {
    "read": [("segtme.io.source", "open_source"), ("segtme.inference.imageio", "read_image")],
    "resample": [("segtme.inference.resample", "resample"), ("segtme.inference.engine", "resample")],
    "forward": [("segtme.inference.engine", "forward_tiles")],
    "engine": [("segtme.inference.engine", "GridPredictor.predict")],
    "postprocess": [("segtme.inference.maps", "instances_from_maps"), ("segtme.inference.postprocess", "hv_watershed"),
                    ("segtme.inference.postprocess", "classify_instances")],
    "features": [("segtme.inference.maps", "build_nuclei_table"), ("segtme.pipeline", "build_nuclei_table")],
    "report": [("segtme.pipeline", "build_report")],
    "geojson": [("segtme.export.geojson", "write_nuclei_geojson")],
    "csv": [("segtme.export.tables", "write_nuclei_csv")],
    "overlay": [("segtme.export.overlay", "write_overlay")],
}
STAGES40 = ("startup", "read", "resample", "forward", "engine_other", "postprocess", "features", "report", "geojson",
            "csv", "overlay")


def _cli_child(spec: dict) -> None:
    """One ``segtme analyze`` in this fresh process with stage timers installed by an import hook
    (nothing of segtme is imported before the CLI imports it, so start-up is the CLI's own)."""
    import importlib.abc
    import threading

    t_spawn = float(spec["t_spawn"])
    acc: dict[str, float] = {k: 0.0 for k in STAGE_TARGETS}
    acc["resample_in_engine"] = 0.0
    first: dict[str, float] = {}
    local = threading.local()
    wanted: dict[str, list[tuple[str, str]]] = {}
    for stage, cands in STAGE_TARGETS.items():
        for mod, attr in cands:
            wanted.setdefault(mod, []).append((attr, stage))

    def timed(fn, stage):
        def inner(*a, **k):
            depth = getattr(local, stage, 0)
            setattr(local, stage, depth + 1)
            t0 = time.time()
            first.setdefault(stage, t0)
            try:
                return fn(*a, **k)
            finally:
                setattr(local, stage, depth)
                if depth == 0:  # outermost call only (e.g. open_source -> read_image)
                    dt = time.time() - t0
                    acc[stage] += dt
                    if stage == "resample" and getattr(local, "engine", 0) > 0:
                        acc["resample_in_engine"] += dt
        return inner

    def patch(module) -> None:
        for attr, stage in wanted.get(module.__name__, []):
            owner, name = module, attr
            if "." in attr:
                cls, name = attr.split(".")
                owner = getattr(module, cls, None)
            if owner is not None and callable(getattr(owner, name, None)):
                setattr(owner, name, timed(getattr(owner, name), stage))

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in wanted:
                return None
            for f in sys.meta_path:
                if f is self or not hasattr(f, "find_spec"):
                    continue
                s = f.find_spec(name, path, target)
                if s is not None:
                    orig = s.loader.exec_module

                    def exec_module(module, _orig=orig):
                        _orig(module)
                        patch(module)

                    s.loader.exec_module = exec_module
                    return s
            return None

    sys.meta_path.insert(0, Hook())
    from segtme.cli import main as cli_main

    rc = cli_main(["analyze", spec["image"], "--mpp", str(spec["mpp"]), "--out", spec["out"], "--no-progress"])
    t_end = time.time()
    acc["engine_other"] = max(0.0, acc.pop("engine") - acc["forward"] - acc.pop("resample_in_engine"))
    res = {"rc": rc, "wall": t_end - t_spawn, "startup": first.get("read", t_end) - t_spawn, **acc,
           "peak_rss_mib": _peak_rss_mib()}
    import json as _json

    ts = sorted(Path(spec["out"]).glob("*.geojson*"))
    res["n_nuclei"] = None
    if ts and ts[0].suffix == ".geojson":
        res["n_nuclei"] = sum(1 for f in _json.loads(ts[0].read_text())["features"]
                              if f.get("properties", {}).get("objectType") in ("detection", "cell"))
    Path(spec["result"]).write_text(_json.dumps(res))


def run_cli(code: Path, image: str, mpp: float, threads: int) -> dict:
    """``segtme analyze`` of ``code``'s tree (its python/ first on PYTHONPATH) in a fresh process."""
    import subprocess

    with tempfile.TemporaryDirectory() as d:
        spec = {"image": image, "mpp": mpp, "out": str(Path(d) / "out"), "result": str(Path(d) / "r.json")}
        env = {**os.environ, "PYTHONPATH": str(code / "python"), "OMP_NUM_THREADS": str(threads)}
        spec["t_spawn"] = time.time()
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cli-child", json.dumps(spec)], env=env,
                           capture_output=True, text=True)
        if p.returncode != 0 or not Path(spec["result"]).is_file():
            raise RuntimeError(f"segtme analyze failed ({code}): {p.stderr[-2000:]}")
        return json.loads(Path(spec["result"]).read_text())


def make_40x_inputs(d: Path, region: int) -> tuple[str, str, str]:
    """(region PNG, single-image PNG, description): real MoNuSeg tiles at their native ~0.25 µm/px
    (no resampling), flipped and tiled into a ``region``² mosaic; the single image is one tile."""
    from PIL import Image

    data = Path(os.environ.get("SEGTME_DATA_DIR", REPO.parent / "shared" / "data"))
    items = json.loads((data / "monuseg-train" / "index.json").read_text())
    items = items["items"] if isinstance(items, dict) else items
    tiles = [np.asarray(Image.open(data / "monuseg-train" / it["image"]).convert("RGB"))[:1000, :1000] for it in items]
    rng = np.random.default_rng(0)
    out = np.zeros((region, region, 3), np.uint8)
    for y in range(0, region, 1000):
        for x in range(0, region, 1000):
            t = tiles[int(rng.integers(len(tiles)))]
            t = t[:, ::-1] if rng.random() < 0.5 else t
            t = t[::-1] if rng.random() < 0.5 else t
            h, w = min(1000, region - y), min(1000, region - x)
            out[y : y + h, x : x + w] = t[:h, :w]
    big, small = d / f"monuseg_{region}.png", d / "monuseg_1000.png"
    Image.fromarray(out).save(big, compress_level=1)
    Image.fromarray(tiles[0]).save(small, compress_level=1)
    return str(big), str(small), f"MoNuSeg training tiles ({len(tiles)}) from {data}, native 0.2456-0.2527 µm/px, analysed as 0.25"


def bench_40x(args) -> int:
    codes = [("current", REPO)]
    if args.base:
        codes.append(("base", Path(args.base).resolve()))
    info = machine()
    load0 = _load()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; load average {load0}", flush=True)
    region = int(args.region)
    mm2_big = (region * 0.25 / 1000) ** 2
    mm2_small = (1000 * 0.25 / 1000) ** 2
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as d:
        big, small, src = make_40x_inputs(Path(d), region)
        for r in range(args.repeats):  # interleaved, so load changes hit both trees alike
            for label, code in codes:
                for name, img in (("1000", small), (str(region), big)):
                    out = run_cli(code, img, 0.25, args.threads)
                    runs.setdefault((label, name), []).append(out)
                    print(f"{label} {name}² run {r + 1}: wall {out['wall']:.2f} s, start-up {out['startup']:.2f} s, "
                          f"{out['n_nuclei']} nuclei, peak {out['peak_rss_mib']:.0f} MiB", flush=True)
    load1 = _load()
    md = render_40x(runs, codes, region, mm2_big, mm2_small, info, load0, load1, src, args)
    print()
    print(md)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (outdir / f"bench40x_{stamp}.md").write_text(md)
    (outdir / f"bench40x_{stamp}.json").write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in runs.items()}, indent=2))
    print(f"saved {outdir / f'bench40x_{stamp}.md'}")
    if args.write_docs:
        update_docs(md, " ".join(["python scripts/bench_inference.py", *sys.argv[1:]]), marker="bench40x")
    return 0


def render_40x(runs, codes, region, mm2_big, mm2_small, info, load0, load1, src, args) -> str:
    base_commit = ""
    if args.base:
        import subprocess

        base_commit = subprocess.run(["git", "-C", args.base, "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip()
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; {info['date']}; load average before / "
        f"after: {load0} / {load1} (shared machine: other jobs ran). torch threads {args.threads}.",
        f"Input: {src}; `segtme analyze IMAGE --mpp 0.25 --out DIR --no-progress`, a fresh process per run, "
        f"best of {args.repeats} (runs interleaved between the trees). base = commit {base_commit or '-'}.",
        "",
        "| code | image | wall s | start-up s | read s | resample s | model forward s | engine other s | post-proc s | "
        "features s | TME report s | GeoJSON s | CSV s | overlay s | peak RSS MiB | nuclei |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best = {}
    for label, _ in codes:
        for name in ("1000", str(region)):
            rs = runs[(label, name)]
            b = min(rs, key=lambda r: r["wall"])
            best[(label, name)] = b
            cells = " | ".join(f"{b[k]:.2f}" for k in STAGES40)
            lines.append(f"| {label} | {name}² px ({(int(name) * 0.25 / 1000) ** 2:.4g} mm²) | {b['wall']:.2f} | {cells} | "
                         f"{b['peak_rss_mib']:.0f} | {b['n_nuclei']} |")
    lines += ["", f"| code | marginal s/mm² (40x) | {region}² px wall s | 1000² px wall s (incl. start-up) |",
              "|---|---:|---:|---:|"]
    for label, _ in codes:
        wb, ws = best[(label, str(region))]["wall"], best[(label, "1000")]["wall"]
        lines.append(f"| {label} | {(wb - ws) / (mm2_big - mm2_small):.2f} | {wb:.2f} | {ws:.2f} |")
    lines += ["", "Stage seconds are wall time inside each stage's functions (outermost call); post-processing and "
              "features run in a worker thread during the model stage and the overlay beside the GeoJSON/CSV, so "
              "stages overlap and can add up to more than the wall time. Start-up = process start to the first "
              "read call (imports, argument checks, model load)."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--cli-child":
        _cli_child(json.loads(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("40x", "working"), default="40x",
                    help="40x: `segtme analyze` on 0.25 µm/px input per stage (headline); working: the 0.5 µm/px mosaic")
    ap.add_argument("--base", default=None, help="40x mode: a second checkout (e.g. a git worktree of an older commit) run beside")
    ap.add_argument("--region", type=int, default=4000, help="mosaic edge in working px (default 4000; the target is stated for 10000)")
    ap.add_argument("--repeats", type=int, default=2, help="end-to-end repeats (fresh process each)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    ap.add_argument("--uni2-tiles", type=int, default=2, help="UNI2-UperHoVer tiles to time (0 = skip)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench"), help="folder for the saved table (git-ignored runs/)")
    ap.add_argument("--write-docs", action="store_true", help="also replace the table in docs/benchmarks.md")
    ap.add_argument("--skip-classical", action="store_true", help="do not run the classical baseline (e.g. for a memory-only run)")
    ap.add_argument("--chunk", type=int, default=None, help="chunk edge in working px (default: the product's)")
    ap.add_argument("--halo", type=int, default=None, help="chunk halo in working px (default: the product's)")
    ap.add_argument("--skip-baseline", action="store_true",
                    help="do not run the engine baseline (fp32, post-processing not pipelined) beside the default settings")
    ap.add_argument("--sweep", action="store_true",
                    help="only time candidate backbones / head widths (random weights, forward s per working MP) and exit")
    args = ap.parse_args(argv)
    if args.sweep:
        return sweep(args.threads)
    if args.mode == "40x":
        return bench_40x(args)

    from segtme.models import resolve_config

    cfg, _ = resolve_config("default")
    work_mpp = float(cfg.mpp)
    info = machine()
    load0 = _load()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; load average {load0}", flush=True)
    rgb, src = make_mosaic(args.region, work_mpp)
    mp_work = rgb.shape[0] * rgb.shape[1] / 1e6
    mm2 = mp_work * (work_mpp**2)  # µm² per px x px / 1e6 = mm²
    print(f"mosaic: {args.region}x{args.region} px at {work_mpp} µm/px = {mp_work:.1f} MP = {mm2:.2f} mm² ({src})", flush=True)

    results: dict = {"machine": info, "threads": args.threads, "chunk": args.chunk, "halo": args.halo, "mosaic": {"px": args.region, "mpp": work_mpp, "megapixels": mp_work, "mm2": mm2, "source": src}}
    with tempfile.TemporaryDirectory() as d:
        png = str(Path(d) / "mosaic.png")
        from PIL import Image

        Image.fromarray(rgb).save(png, compress_level=1)
        del rgb
        runs = []
        for r in range(args.repeats):
            out = _run_child(_child_default, png, work_mpp, args.threads, "auto", True, args.chunk, args.halo)
            runs.append(out)
            print(f"default model run {r + 1}: {out['total']:.1f} s, {out['n_nuclei']} nuclei, peak RSS {out['peak_rss_mib']:.0f} MiB", flush=True)
        base = None
        if not args.skip_baseline:
            base = _run_child(_child_default, png, work_mpp, args.threads, "fp32", False, args.chunk, args.halo)
            print(f"engine baseline (fp32, sequential): {base['total']:.1f} s, {base['n_nuclei']} nuclei", flush=True)
        cl = None
        if not args.skip_classical:
            cl = _run_child(_child_classical, png, work_mpp)
            print(f"classical: {cl['total']:.1f} s, {cl['n_nuclei']} nuclei", flush=True)
    results["default_runs"] = runs
    results["engine_baseline"] = base
    results["classical"] = cl
    fwd_default = tile_forward_seconds("default", 5, args.threads)
    results["tile_224_default_s"] = fwd_default
    uni = []
    if args.uni2_tiles > 0:
        uni = tile_forward_seconds("uni2_uperhover", args.uni2_tiles, args.threads, random_weights=True)
    results["tile_224_uni2_s"] = uni
    results["load_before"], results["load_after"] = load0, _load()

    md = render_table(results, cfg)
    print()
    print(md)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    from segtme.export.atomic import atomic_write_text

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    atomic_write_text(outdir / f"bench_{stamp}.md", md)
    atomic_write_text(outdir / f"bench_{stamp}.json", json.dumps(results, indent=2))
    print(f"saved {outdir / f'bench_{stamp}.md'}")
    if args.write_docs:
        update_docs(md, " ".join(["python scripts/bench_inference.py", *(argv if argv is not None else sys.argv[1:])]))
    return 0


#: candidates for the default model (timm name, features_only levels, UperNet head width)
SWEEP = [
    ("resnet18", [1, 2, 3, 4], 128),
    ("resnet18", [1, 2, 3, 4], 32),
    ("resnet10t", [1, 2, 3, 4], 32),
    ("resnet10t", [0, 1, 2, 3], 32),
    ("resnet10t", [0, 1, 2, 3], 16),
    ("mobilenetv3_large_100", [1, 2, 3, 4], 32),
    ("efficientnet_b0", [1, 2, 3, 4], 32),
    ("regnetx_004", [1, 2, 3, 4], 32),
]


def sweep(threads: int, rounds: int = 3, batch: int = 4, tile: int = 256) -> int:
    """Forward seconds per working megapixel of each candidate (UperHoVer, consep4, random
    weights, channels_last, batch 4 x 256²), interleaved over ``rounds`` so machine load hits all
    alike; s/mm² follows for 0.5 µm/px (4 MP/mm²) and 0.25 µm/px (16 MP/mm²)."""
    import torch

    from segtme.models import ModelConfig, create_model

    torch.set_num_threads(threads)
    x = torch.randn(batch, 3, tile, tile).contiguous(memory_format=torch.channels_last)
    mpx = batch * tile * tile / 1e6
    models = []
    for bb, oi, hid in SWEEP:
        cfg = ModelConfig(name="sweep", backbone=bb, out_indices=oi, head_hidden=hid, taxonomy="consep4", mpp=0.5)
        models.append(create_model(cfg).eval().to(memory_format=torch.channels_last))
    times: list[list[float]] = [[] for _ in SWEEP]
    print(f"load average {_load()}")
    with torch.inference_mode():
        for m in models:
            m(x)
        for _ in range(rounds):
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                m(x)
                times[i].append((time.perf_counter() - t0) / mpx)
    print("| backbone | levels (strides) | head width | params M | fwd s/MP min | median | fwd s/mm² @0.5 µm/px | @0.25 µm/px |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (bb, oi, hid), m, ts in zip(SWEEP, models, times):
        n = sum(p.numel() for p in m.parameters()) / 1e6
        strides = m.backbone.strides
        print(f"| {bb} | {oi} ({strides}) | {hid} | {n:.2f} | {min(ts):.3f} | {statistics.median(ts):.3f} | "
              f"{4 * min(ts):.2f} | {16 * min(ts):.2f} |")
    print(f"load average {_load()}")
    return 0


def _chunk_defaults(chunk: int | None = None, halo: int | None = None) -> str:
    from segtme.pipeline import DEFAULT_CHUNK_WORK, DEFAULT_HALO_WORK

    return f"{chunk or DEFAULT_CHUNK_WORK} + 2 x {DEFAULT_HALO_WORK if halo is None else halo} halo"


def render_table(res: dict, cfg) -> str:
    m = res["machine"]
    mz = res["mosaic"]
    runs = res["default_runs"]
    best = min(runs, key=lambda r: r["total"])
    med_total = statistics.median(r["total"] for r in runs)
    mpx, mm2 = mz["megapixels"], mz["mm2"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}; {m['date']}; "
        f"load average before / after: {res['load_before']} / {res['load_after']} (shared machine: other jobs ran).",
        f"Image: {mz['px']}x{mz['px']} px mosaic of real H&E at {mz['mpp']} µm/px = {mpx:.1f} MP = {mm2:.2f} mm² ({mz['source']}).",
        f"Default model: `{cfg.name}` = UperHoVer, timm `{cfg.backbone}` levels {cfg.out_indices}, UperNet heads width "
        f"{cfg.head_hidden}, {cfg.tax.name}, working MPP {cfg.mpp}, tiles {cfg.tile_size}/{cfg.tile_overlap}, chunks "
        f"{_chunk_defaults(res.get('chunk'), res.get('halo'))}, BatchNorm folded into the convolutions at inference; torch threads {res.get('threads', 2)}, "
        f"OMP_WAIT_POLICY={m.get('omp_wait_policy', '?')}.",
        "",
        "| path | total s | MP/s | s/mm² | read s | model s | post-proc s (% of total) | features s | export s | peak RSS MiB | nuclei |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(f"default ({r.get('precision', '?')}, pipelined), run {i + 1}", r) for i, r in enumerate(runs)]
    if res.get("engine_baseline"):
        rows.append(("default, engine baseline (fp32, sequential)", res["engine_baseline"]))
    for label, r in rows:
        lines.append(
            f"| {label} | {r['total']:.1f} | {mpx / r['total']:.2f} | {r['total'] / mm2:.2f} | {r['read']:.1f} | "
            f"{r['model']:.1f} | {r['postprocess']:.1f} ({100 * r['postprocess'] / r['total']:.0f} %) | {r['features']:.1f} | "
            f"{r['export']:.1f} | {r['peak_rss_mib']:.0f} | {r['n_nuclei']} |"
        )
    c = res["classical"]
    if c is not None:
        lines.append(
            f"| classical baseline | {c['total']:.1f} | {mpx / c['total']:.2f} | {c['total'] / mm2:.2f} | {c['read']:.1f} | "
            f"{c['detect']:.1f} (detection) | – | {c['features']:.1f} | – | {c['peak_rss_mib']:.0f} | {c['n_nuclei']} |"
        )
    b = res.get("engine_baseline")
    lines += [
        "",
        "Stage seconds are wall time spent in each stage's functions; with pipelining the post-processing "
        "and features of chunk k run in a worker thread during the model's chunk k + 1, so the stages can "
        "add up to more than the total.",
    ]
    if b:
        lines.append(f"Speed-up of the default settings over the engine baseline in this run: "
                     f"{b['total'] / best['total']:.2f}x (best run; nuclei {best['n_nuclei']} vs {b['n_nuclei']}).")
    lines += [
        "",
        f"Default model, best of {len(runs)}: {mpx / best['total']:.2f} MP/s = {best['total'] / mm2:.2f} s/mm² "
        f"(median {med_total / mm2:.2f} s/mm²); post-processing {100 * best['postprocess'] / best['total']:.0f} % of the total; "
        f"peak RSS {best['peak_rss_mib']:.0f} MiB (model loaded: {best['base_rss_mib']:.0f} MiB; peak during "
        f"`analyze` {best.get('peak_analyze_mib', float('nan')):.0f} MiB, during export "
        f"{best.get('peak_export_mib') or float('nan'):.0f} MiB).",
        "",
        "| forward pass, one 224x224 tile, batch 1 | min s | median s |",
        "|---|---:|---:|",
        f"| default model ({cfg.backbone}) | {min(res['tile_224_default_s']):.3f} | {statistics.median(res['tile_224_default_s']):.3f} |",
    ]
    if res["tile_224_uni2_s"]:
        u = res["tile_224_uni2_s"]
        lines.append(f"| UNI2-UperHoVer (ViT-G/14 + 2 UperNet heads of 768; **random weights**) | {min(u):.2f} | {statistics.median(u):.2f} |")
    return "\n".join(lines) + "\n"


def update_docs(md: str, command: str, marker: str = "bench") -> None:
    from segtme.export.atomic import atomic_write_text

    p = REPO / "docs" / "benchmarks.md"
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = p.read_text() if p.is_file() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    block = f"{start}\nCommand: `{command}`\n\n{md}{end}"
    atomic_write_text(p, head + block + tail)
    print(f"updated {p}")


if __name__ == "__main__":
    sys.exit(main())
