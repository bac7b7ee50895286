#!/usr/bin/env python
"""Inference speed benchmark: the default model through the real product path, the classical
baseline on the same image, and the full UNI2-UperHoVer architecture's forward time per tile.

**Headline (``--mode 40x``, the default): ``segtme analyze`` as a user runs it**, on a 1000² and
a 4000² px mosaic of real MoNuSeg tiles at their own ~0.25 µm/px (40x; 0.0625 and 1 mm²) and a
``--region-05`` px region at 0.5 µm/px (default 10 000² = 25 mm²; 0 skips it). Every run is a
fresh ``segtme analyze IMAGE --mpp M --out DIR --no-progress`` process. Per image and tree: an
*instrumented* run (``stage_child``: the product functions of ``STAGE_HOOKS`` wrapped by an import
hook, exclusive wall seconds per stage — start-up = process start to the first stage call, model
load, read, resample, model forward, tiling + blending, post-processing, features, TME report,
GeoJSON, CSV, overlay PNG, tme.json, other) and a *plain* run (wall, CPU seconds and peak RSS of
the process from ``wait4``; the figures quoted). Marginal s/mm² = (wall 4000² − wall 1000²) /
0.9375 mm². With ``--base DIR`` (a ``git worktree`` of older code) the same runs use that tree
(its ``python/`` on PYTHONPATH), interleaved with this one, for figures side by side. One warm-up
per tree on the first image (file cache; the compiled-model cache, in a temporary
``$SEGTME_CACHE_DIR``, is filled by it: the cold first run is reported apart).

    git worktree add /work/scratch/base <old-commit>
    python scripts/bench_inference.py --base /work/scratch/base --repeats 2 --write-docs

**ONNX Runtime (``--mode onnx``)**: the product's ONNX Runtime module (the shipped
``weights/default.onnx``, fp32) and an int8 static-QDQ variant of it against torch fp32 (and bf16
where the CPU has it) on the same 512² tiles (batch 2), wall and CPU s per tile, with held-out
PQ/AJI of each (``--no-accuracy`` skips that).

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
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("read", "model", "postprocess", "features", "export")


# ----------------------------------------------------------------------------- mosaic
def make_mosaic(region: int, work_mpp: float, seed: int = 0) -> tuple[np.ndarray, str]:
    """A ``region`` x ``region`` px RGB mosaic of real H&E at ``work_mpp`` µm/px."""
    from PIL import Image

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
            if abs(m / work_mpp - 1.0) > 0.02:  # box filter to the target MPP (a 40x mosaic keeps the pixels)
                h, w = rgb.shape[:2]
                size = (max(1, round(w * m / work_mpp)), max(1, round(h * m / work_mpp)))
                rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))
            tiles.append(rgb)
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
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "(not installed)"

    # versions without importing torch: this process forks the measured runs, whose peak-RSS
    # count starts at this process's resident size (see save_mosaic)
    from segtme import runtime

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": ver("torch"),
        "onnxruntime": ver("onnxruntime"),
        "native_bf16": runtime.cpu_bf16_flags(),
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
    }


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- 40x stage split
#: (module, attribute, stage): the product functions whose wall time is booked to a stage, for the
#: current code and for older trees (a name missing from a tree is skipped). Time is *exclusive*:
#: a wrapped call inside another wrapped call (resample inside the tile grid, hv_watershed inside
#: instances_from_maps) is booked to the inner stage only, per thread.
STAGE_HOOKS = (
    ("segtme.inference.imageio", "read_image", "read"),
    ("segtme.io.image", "read_image", "read"),
    ("segtme.models.registry", "load_model", "model load"),
    ("segtme.resample", "resample", "resample"),
    ("segtme.inference.engine", "resample", "resample"),
    ("segtme.inference.engine", "forward_tiles", "model forward"),
    ("segtme.inference.engine", "GridPredictor.predict", "tiling + blending"),
    ("segtme.inference.maps", "instances_from_maps", "post-processing"),
    ("segtme.inference.postprocess", "hv_watershed", "post-processing"),
    ("segtme.inference.postprocess", "classify_instances", "post-processing"),
    ("segtme.inference.nuclei", "build_nuclei_table", "features"),
    ("segtme.inference.maps", "build_nuclei_table", "features"),
    ("segtme.pipeline", "build_nuclei_table", "features"),
    ("segtme.pipeline", "build_report", "TME report"),
    ("segtme.export.geojson", "write_nuclei_geojson", "GeoJSON"),
    ("segtme.export.tables", "write_nuclei_csv", "CSV"),
    ("segtme.export.overlay", "write_overlay", "overlay PNG"),
    ("segtme.export.bundle", "atomic_write_text", "tme.json"),
)
#: the order of the headline rows
STAGE_ROWS = ("start-up (imports, CLI)", "model load", "read", "resample", "model forward", "tiling + blending",
              "post-processing", "features", "TME report", "GeoJSON", "CSV", "overlay PNG", "tme.json", "other")


def stage_child(out_json: str, cli_args: list[str]) -> int:
    """Run ``segtme <cli_args>`` in this fresh process with the STAGE_HOOKS timed; write the split
    to ``out_json``. The hooks are installed by an import hook as each module is first executed
    (nothing of segtme is imported before the CLI imports it, so start-up is the CLI's own).
    ``$SEGTME_BENCH_T0`` (the parent's ``time.time()`` just before it started this process) dates
    the process start, so start-up includes the interpreter and every import."""
    import importlib.abc
    import threading

    t_start = float(os.environ.get("SEGTME_BENCH_T0") or time.time())
    times: dict[str, float] = {}
    worker: dict[str, float] = {}
    first_call: dict[str, float] = {}
    tls = threading.local()
    lock = threading.Lock()

    def wrap(fn, stage):
        def timed(*a, **k):
            stack = getattr(tls, "stack", None)
            if stack is None:
                stack = tls.stack = []
            first_call.setdefault(stage, time.time())
            t0 = time.perf_counter()
            stack.append(0.0)
            try:
                return fn(*a, **k)
            finally:
                inner = stack.pop()
                dt = time.perf_counter() - t0
                if stack:
                    stack[-1] += dt
                with lock:
                    times[stage] = times.get(stage, 0.0) + dt - inner
                    if threading.current_thread() is not threading.main_thread():
                        worker[stage] = worker.get(stage, 0.0) + dt - inner

        timed.__wrapped__ = fn
        return timed

    wanted: dict[str, list[tuple[str, str]]] = {}
    for mod_name, attr, stage in STAGE_HOOKS:
        wanted.setdefault(mod_name, []).append((attr, stage))

    def patch(module) -> None:
        for attr, stage in wanted.get(module.__name__, []):
            owner, name = module, attr
            if "." in attr:
                cls, name = attr.split(".")
                owner = getattr(module, cls, None)
            fn = getattr(owner, name, None) if owner is not None else None
            if callable(fn) and getattr(fn, "__wrapped__", None) is None:
                setattr(owner, name, wrap(fn, stage))

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in wanted:
                return None
            for f in sys.meta_path:
                if f is self or not hasattr(f, "find_spec"):
                    continue
                spec = f.find_spec(name, path, target)
                if spec is not None:
                    orig = spec.loader.exec_module

                    def exec_module(module, _orig=orig):
                        _orig(module)
                        patch(module)

                    spec.loader.exec_module = exec_module
                    return spec
            return None

    sys.meta_path.insert(0, Hook())
    from segtme.cli import main as cli_main

    rc = cli_main(cli_args)
    t_end = time.time()
    # start-up: process start -> the first stage call (interpreter, imports, argument and flag checks)
    t_first = min(first_call.values()) if first_call else t_end
    res = {"wall": t_end - t_start, "rc": rc, "startup_to_first_stage": t_first - t_start,
           "stages": times, "worker": worker, "peak_rss_mib": _peak_rss_mib()}
    Path(out_json).write_text(json.dumps(res))
    return int(rc or 0)


def _nuclei_count(out_dir: Path) -> int | None:
    p = out_dir / "nuclei.csv"
    if not p.is_file():
        return None
    with open(p, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip() and not line.startswith("#")) - 1


def run_analyze(tree: str, image: str, mpp: float, extra: Sequence[str], *, stages: bool, env: dict) -> dict:
    """One ``segtme analyze`` in a fresh process with ``PYTHONPATH=<tree>/python``: whole-process
    wall (parent clock), peak RSS (``wait4``), and with ``stages`` the stage split (stage_child)."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="segtme-bench-") as d:
        out = Path(d) / "out"
        cli = ["analyze", image, "--mpp", f"{mpp:g}", "--out", str(out), "--no-progress", *extra]
        if stages:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--stage-child", str(Path(d) / "s.json"), "--", *cli]
        else:
            cmd = [sys.executable, "-m", "segtme.cli", *cli]
        e = {**env, "PYTHONPATH": str(Path(tree) / "python"), "SEGTME_BENCH_T0": ""}
        t0 = time.time()
        e["SEGTME_BENCH_T0"] = repr(t0)
        p = subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.time() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read() if p.stderr else ""
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {err.strip().splitlines()[-1:]}")
        r = {"wall": wall, "peak_rss_mib": ru.ru_maxrss / 1024.0, "cpu_s": ru.ru_utime + ru.ru_stime,
             "nuclei": _nuclei_count(out)}
        if stages:
            r["split"] = json.loads((Path(d) / "s.json").read_text())
        return r


def stage_row_values(split: dict) -> dict[str, float]:
    """The headline rows of one stage split (seconds)."""
    st = dict(split["stages"])
    load = st.get("model load", 0.0)
    out = {"start-up (imports, CLI)": split["startup_to_first_stage"]}
    for k in STAGE_ROWS[1:-1]:
        out[k] = st.get(k, 0.0)
    out["model load"] = load
    main_sum = sum(v for k, v in st.items()) - sum(split.get("worker", {}).values())
    out["other"] = max(0.0, split["wall"] - split["startup_to_first_stage"] - main_sum)
    return out


def tree_env(env: dict, overrides: dict[str, str] | None) -> dict:
    """``env`` with one tree's variable overrides (e.g. ``SEGTME_RUNTIME=torch``)."""
    return {**env, **(overrides or {})}


def headline_40x(trees: dict[str, str], images: dict[str, tuple[str, float]], repeats: int, extra: Sequence[str] = (),
                 threads: int = 2, tree_vars: dict[str, dict[str, str]] | None = None) -> dict:
    """The 40x headline: for every image and tree, one warm-up (fills the compiled-model cache of
    trees that have one), then ``repeats`` stage-split runs and ``repeats`` plain runs, the trees
    interleaved (A B A B) so the machine's load drifts over all alike. ``tree_vars``: environment
    overrides per tree name (a tree may be the same checkout run with another ``SEGTME_RUNTIME``).
    On the 10 000² region (minutes per run) one plain run per tree and one stage split of the
    tree named "current" only."""
    tree_vars = tree_vars or {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res: dict = {"load": [_load()], "runs": {}}
    with tempfile.TemporaryDirectory(prefix="segtme-bench-cache-") as cache:
        env["SEGTME_CACHE_DIR"] = cache
        for k, (img_name, (path, mpp)) in enumerate(images.items()):
            for tree_name, tree in trees.items():
                slot = res["runs"].setdefault(img_name, {}).setdefault(tree_name, {"plain": [], "split": [], "cold_wall": None})
                if k == 0:  # warm-up on the first (smallest) image: OS file cache, compiled-model cache
                    t0 = time.time()
                    run_analyze(tree, path, mpp, extra, stages=False, env=tree_env(env, tree_vars.get(tree_name)))
                    slot["cold_wall"] = time.time() - t0
                    print(f"  {img_name} {tree_name}: warm-up (cold cache) {slot['cold_wall']:.1f} s", flush=True)
            big = os.path.getsize(path) > 50_000_000  # the 10 000² region: one counted run (minutes each)
            for r in range(1 if big else repeats):
                for tree_name, tree in trees.items():
                    slot = res["runs"][img_name][tree_name]
                    e = tree_env(env, tree_vars.get(tree_name))
                    a = run_analyze(tree, path, mpp, extra, stages=True, env=e) if not big or tree_name == "current" else None
                    b = run_analyze(tree, path, mpp, extra, stages=False, env=e)
                    if a is not None:
                        slot["split"].append(a)
                    slot["plain"].append(b)
                    inst = f" (instrumented {a['wall']:.1f} s)" if a is not None else ""
                    print(f"  {img_name} {tree_name} run {r + 1}: {b['wall']:.1f} s wall{inst}, "
                          f"peak {b['peak_rss_mib']:.0f} MiB, {b['nuclei']} nuclei; load {_load()}", flush=True)
            res["load"].append(_load())
    return res


def render_headline(res: dict, images: dict[str, tuple[str, float]], mm2: dict[str, float]) -> str:
    """Markdown: the stage split of every image (median of the split runs, per tree side by
    side) and the whole-command figures with the marginal s/mm² of the 40x pair."""
    trees = list(next(iter(res["runs"].values())).keys())
    lines: list[str] = []
    med = statistics.median
    for img in res["runs"]:
        st = [t for t in trees if res["runs"][img][t]["split"]]  # trees with a stage split of this image
        lines += [f"**{img}** ({mm2[img]:.4g} mm²) — seconds per stage (median of {len(res['runs'][img][st[0]]['split'])} "
                  "instrumented runs; exclusive wall time in each stage's functions, all threads):", "",
                  "| stage | " + " | ".join(st) + " |", "|---|" + "---:|" * len(st)]
        vals = {t: [stage_row_values(a["split"]) for a in res["runs"][img][t]["split"]] for t in st}
        for row in STAGE_ROWS:
            lines.append(f"| {row} | " + " | ".join(f"{med(v[row] for v in vals[t]):.2f}" for t in st) + " |")
        lines.append("| **whole command, instrumented** | " + " | ".join(
            f"**{med(a['wall'] for a in res['runs'][img][t]['split']):.2f}**" for t in st) + " |")
        lines.append("")
    lines += ["Whole command (`segtme analyze IMAGE --mpp M --out D --no-progress`, fresh process, no instrumentation; "
              "median [min–max]; warm cache):", "",
              "| image | tree | wall s | s/mm² | CPU s | peak RSS MiB | nuclei | first run (cold cache) s |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for img in res["runs"]:
        for t in trees:
            runs = res["runs"][img][t]["plain"]
            w = [r["wall"] for r in runs]
            cw = res["runs"][img][t]["cold_wall"]
            cold = "–" if cw is None else f"{cw:.1f}"
            lines.append(f"| {img} | {t} | {med(w):.2f} [{min(w):.2f}–{max(w):.2f}] | {med(w) / mm2[img]:.2f} | "
                         f"{med(r['cpu_s'] for r in runs):.1f} | {max(r['peak_rss_mib'] for r in runs):.0f} | "
                         f"{runs[0]['nuclei']} | {cold} |")
    big = [i for i in res["runs"] if i.startswith("40x 4000")]
    small = [i for i in res["runs"] if i.startswith("40x 1000")]
    if big and small:
        lines += ["", "Marginal cost at 40x = (wall 4000² − wall 1000²) / (mm² difference):", ""]
        for t in trees:
            wb = med(r["wall"] for r in res["runs"][big[0]][t]["plain"])
            ws = med(r["wall"] for r in res["runs"][small[0]][t]["plain"])
            lines.append(f"- {t}: {(wb - ws) / (mm2[big[0]] - mm2[small[0]]):.2f} s/mm²")
    lines += ["", f"Load average (1/5/15 min) at the start and after each image: {' → '.join(res['load'])}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- ONNX Runtime lever
def onnx_vs_torch(threads: int, repeats: int = 5, accuracy: bool = True) -> str:
    """``--mode onnx``: the product's ONNX Runtime modules of the shipped default model
    (``load_model("default")`` with ``SEGTME_RUNTIME=onnx`` / ``onnx-int8`` ->
    ``models.onnx_runtime.OrtModule`` running the shipped ``weights/default.onnx`` (fp32) /
    ``default_int8.onnx`` (static QDQ, scripts/export_onnx.py)) against torch (the folded
    eager module, fp32; bf16 autocast only where the CPU has native bf16) on the same real-H&E
    512² tiles at 0.5 µm/px, batch 2 (the product's batch at 512²), interleaved. Wall and CPU
    (process) seconds per tile. Accuracy = PQ/AJI against the ground truth of the 5 held-out
    MoNuSeg images through the product's maps -> nuclei step (``inference.instances.predict_instances``),
    each runtime's module in a ``LoadedModel`` of the same config.

    ``segtme.runtime`` is imported first, as the CLI does (OpenMP passive waiting is set before
    torch loads). The first version of this mode imported torch before it, so torch's OpenMP
    workers spun actively on the loaded machine and torch looked 3.7x slower than ONNX Runtime;
    with the product's setting the two fp32 runtimes are within ~10 % (docs/benchmarks.md)."""
    import segtme.runtime  # noqa: F401,I001  (first: OMP_WAIT_POLICY=PASSIVE before torch loads, as the product)
    import onnxruntime as ort
    import torch
    from PIL import Image

    from segtme.eval.metrics import instance_metrics
    from segtme.inference.engine import _prepare
    from segtme.inference.instances import predict_instances
    from segtme.models import onnx_runtime
    from segtme.models.registry import LoadedModel, cpu_has_native_bf16, load_model

    torch.set_num_threads(threads)
    os.environ["SEGTME_RUNTIME"] = "torch"
    lm = load_model("default", "cpu", precision="fp32")
    folded = _prepare(lm)
    os.environ["SEGTME_RUNTIME"] = "onnx"
    product = load_model("default", "cpu", precision="auto")
    os.environ.pop("SEGTME_RUNTIME")
    if not isinstance(product.module, onnx_runtime.OrtModule):
        raise SystemExit("the product did not load the ONNX Runtime module (see the log); regenerate the graph with "
                         "python scripts/export_onnx.py")
    cfg = lm.config
    data = Path(os.environ.get("SEGTME_DATA_DIR", REPO.parent / "shared" / "data")) / "monuseg-train"
    items = json.loads((data / "index.json").read_text())
    held = set(cfg.extra["held_out"]["monuseg"])
    held_items = [it for it in items if Path(it["image"]).stem in held]
    other = [it for it in items if Path(it["image"]).stem not in held]

    def half(it) -> np.ndarray:
        im = Image.open(data / it["image"]).convert("RGB")
        return np.asarray(im.resize((im.width // 2, im.height // 2), Image.BOX))

    mean = np.asarray(cfg.io.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(cfg.io.std, np.float32).reshape(1, 3, 1, 1)
    T = int(cfg.tile_size)

    def norm(tiles: list[np.ndarray]) -> np.ndarray:
        x = np.stack(tiles).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return np.ascontiguousarray((x - mean) / std)

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, T - a.shape[0]), (0, T - a.shape[1]), (0, 0)), mode="reflect")

    batch = norm([pad(half(other[0])), pad(half(other[1]))])
    xt = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
    modules: dict[str, tuple[torch.nn.Module, str]] = {f"torch fp32 (the torch path: {type(folded).__name__})": (folded, "fp32")}
    if cpu_has_native_bf16():
        modules["torch bf16 autocast"] = (folded, "bf16")
    modules[f"ONNX Runtime {ort.__version__} fp32 (shipped graph, SEGTME_RUNTIME=onnx)"] = (product.module, "fp32")
    os.environ["SEGTME_RUNTIME"] = "onnx-int8"
    q = load_model("default", "cpu", precision="auto")
    os.environ.pop("SEGTME_RUNTIME")
    if isinstance(q.module, onnx_runtime.OrtModule):
        modules["ONNX Runtime int8 (shipped static QDQ, SEGTME_RUNTIME=onnx-int8)"] = (q.module, "fp32")
    else:
        print("int8 graph not loaded (missing or stale: python scripts/export_onnx.py)", flush=True)
    def runner(mod: torch.nn.Module, prec: str):
        def run():
            with torch.inference_mode():
                if prec == "bf16":
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return mod(xt)
                return mod(xt)
        return run

    runners = {k: runner(m, p) for k, (m, p) in modules.items()}
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    load0 = _load()
    for fn in runners.values():
        fn()
    for _ in range(repeats):
        for k, fn in runners.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append((time.perf_counter() - t0) / len(batch))
            cpu[k].append((time.process_time() - c0) / len(batch))
    load1 = _load()
    print({k: [round(t, 4) for t in v] for k, v in wall.items()}, flush=True)
    acc: dict[str, tuple[float, float, int]] = {}
    gts = [(np.asarray(Image.open(data / it["image"]).convert("RGB")), np.asarray(Image.open(data / it["label"])).astype(np.int32),
            float(it.get("mpp") or 0.25)) for it in held_items] if accuracy else []
    for k, (module, prec) in modules.items():
        if not gts:
            break
        m = LoadedModel(cfg, module if module is not folded else lm.module, lm.device, lm.source, prec)
        ms = [instance_metrics(gt, predict_instances(m, rgb, mpp).inst) for rgb, gt, mpp in gts]
        acc[k] = (float(np.mean([x.pq for x in ms])), float(np.mean([x.aji for x in ms])), sum(x.n_pred for x in ms))
    ref = statistics.median(cpu[next(iter(cpu))])
    lines = [f"ONNX Runtime {ort.__version__} vs torch {torch.__version__}, {threads} threads, {platform.processor() or platform.machine()}"
             f" (native bf16: {cpu_has_native_bf16()}); load average {load0} -> {load1} (timing), {_load()} (after accuracy); "
             f"batch {batch.shape[0]} x {T}² px of real H&E at 0.5 µm/px, {repeats} interleaved rounds; accuracy on the "
             f"{len(gts)} held-out MoNuSeg images (product maps -> nuclei).", "",
             "| runtime | wall s per tile, median [min] | CPU s per tile, median [min] | CPU vs torch fp32 | held-out PQ | AJI | nuclei |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k in runners:
        pq, aji, n = acc.get(k, (float("nan"), float("nan"), 0))
        lines.append(f"| {k} | {statistics.median(wall[k]):.3f} [{min(wall[k]):.3f}] | {statistics.median(cpu[k]):.3f} "
                     f"[{min(cpu[k]):.3f}] | {ref / statistics.median(cpu[k]):.2f}x | {pq:.4f} | {aji:.4f} | {n} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--mosaic-child"]:  # internal: write one mosaic PNG (see save_mosaic)
        return save_mosaic_here(int(argv[1]), float(argv[2]), argv[3])
    if argv[:1] == ["--stage-child"]:  # internal: one instrumented `segtme` run (see stage_child)
        return stage_child(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("40x", "working", "onnx"), default="40x",
                    help="40x (headline): `segtme analyze` per stage on a 1000² and a 4000² px image at 0.25 µm/px and a "
                    "--region-05 px region at 0.5 µm/px; working: the engine on a 0.5 µm/px mosaic (--region)")
    ap.add_argument("--base", default=None, metavar="DIR",
                    help="40x mode: a checkout of older code run beside this tree (its python/ on PYTHONPATH), e.g. "
                    "`git worktree add /tmp/base COMMIT`")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=VAR=VALUE",
                    help="40x mode: also run this tree with one environment override, as tree 'current, NAME' "
                    "(repeatable), e.g. --also torch=SEGTME_RUNTIME=torch")
    ap.add_argument("--region-05", type=int, default=10000, help="40x mode: edge of the 0.5 µm/px region (0 = skip)")
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
    ap.add_argument("--no-accuracy", action="store_true", help="onnx mode: timings only (no held-out PQ/AJI)")
    ap.add_argument("--sweep", action="store_true",
                    help="only time candidate backbones / head widths (random weights, forward s per working MP) and exit")
    args = ap.parse_args(argv)
    if args.sweep:
        return sweep(args.threads)
    if args.mode == "40x":
        return headline_main(args, argv)
    if args.mode == "onnx":
        print(onnx_vs_torch(args.threads, max(3, args.repeats), accuracy=not args.no_accuracy))
        return 0

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


def save_mosaic_here(px: int, mpp: float, path: str) -> int:
    """Write ``make_mosaic(px, mpp, seed=px)`` to ``path`` (PNG) and its source line to
    ``path + '.src'``, in this process."""
    from PIL import Image

    rgb, src = make_mosaic(px, mpp, seed=px)
    Image.fromarray(rgb).save(path, compress_level=1)
    Path(path + ".src").write_text(src)
    return 0


def save_mosaic(px: int, mpp: float, path: str) -> str:
    """The mosaic PNG built in a child process, so this benchmark process stays small: Linux
    starts a child's peak-RSS count (``wait4``'s ``ru_maxrss``) at its parent's resident size
    when it forks, so a parent that had built the 10 000² mosaic (~1.4 GB) made every later
    child report at least that (measured 2026-12-03: 1390 MiB for a 341 MiB run). Returns the
    source description."""
    import subprocess

    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--mosaic-child", str(px), repr(mpp), path], check=True)
    return Path(path + ".src").read_text()


def headline_main(args: argparse.Namespace, argv: list[str]) -> int:
    """--mode 40x: build the three images, run headline_40x, print and save the table."""
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, native bf16 {info['native_bf16']}, torch {info['torch']}, "
          f"onnxruntime {info['onnxruntime']}; load average {_load()}", flush=True)
    trees = {}
    if args.base:
        trees["baseline"] = str(Path(args.base).resolve())
    trees["current"] = str(REPO)
    tree_vars: dict[str, dict[str, str]] = {}
    for spec in args.also:  # NAME=VAR=VAL: this tree again with one environment override
        name, _, var = spec.partition("=")
        k, _, v = var.partition("=")
        if not name or not k:
            raise SystemExit(f"--also {spec!r}: expected NAME=VAR=VALUE, e.g. torch=SEGTME_RUNTIME=torch")
        trees[f"current, {name}"] = str(REPO)
        tree_vars[f"current, {name}"] = {k: v}
    with tempfile.TemporaryDirectory(prefix="segtme-bench-img-") as d:
        images: dict[str, tuple[str, float]] = {}
        mm2: dict[str, float] = {}
        specs = [("40x 1000² px", 1000, 0.25), ("40x 4000² px", 4000, 0.25)]
        if args.region_05:
            specs.append((f"20x {args.region_05}² px", args.region_05, 0.5))
        src = ""
        for name, px, mpp in specs:
            p = str(Path(d) / f"{px}_{mpp}.png")
            src = save_mosaic(px, mpp, p)
            images[name] = (p, mpp)
            mm2[name] = px * px * mpp * mpp / 1e6
        res = headline_40x(trees, images, args.repeats, threads=args.threads, tree_vars=tree_vars)
    res["tree_vars"] = tree_vars
    res["machine"], res["images"], res["mm2"], res["source"] = info, {k: v[1] for k, v in images.items()}, mm2, src
    md = (f"Machine: {info['cpu']}, {info['cores']} cores, native bf16: {'yes' if info['native_bf16'] else 'no'}, "
          f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, Python {info['python']}; {info['date']}. "
          f"Images: mosaics of {src.split(' from ')[0]} (40x: their own ~0.25 µm/px pixels; 20x: box-downsampled).\n\n"
          + render_headline(res, images, mm2))
    print()
    print(md)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (outdir / f"bench40x_{stamp}.md").write_text(md)
    (outdir / f"bench40x_{stamp}.json").write_text(json.dumps(res, indent=2))
    print(f"saved {outdir / f'bench40x_{stamp}.md'}")
    if args.write_docs:
        update_docs(md, " ".join(["python scripts/bench_inference.py", *argv]), marker="bench40x")
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
