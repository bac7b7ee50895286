#!/usr/bin/env python
"""GPU check (issue #16.5): one command on a CUDA machine with this repo and its venv, < 5 min.

Prints one table:

* forward tiles/s of the shipped ``default`` model (512² tiles) and of UNI2-UperHoVer
  (``uni2_uperhover``: ViT-G/14 + two UperNet heads of 768, **random weights**, 224² tiles), bf16
  autocast as served on CUDA (``runtime.resolve_precision``), channels-last, BatchNorm folded,
  batch 1, 4, 16, 64 (a batch that does not fit in GPU memory says "OOM");
* ``segtme serve`` on CUDA with 1 vs 4 concurrent DetectTME clients (``scripts/bench_server.py``,
  batching on), aggregate tiles/s and the concurrent / sequential ratio (target >= 1.5x), and
  start -> SERVING, as rows of the same table.

The whole check stays within ``--budget`` seconds (default 290); past it it fails (exit 1).

It refuses to run without CUDA (exit 2, one line): a CPU fallback would print numbers that mean
something else.

    scripts/bench_gpu.sh                 # everything
    scripts/bench_gpu.sh --skip-serve    # forward passes only
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))


def require_cuda() -> str:
    """The CUDA device name, or SystemExit(2) with one line when CUDA is not available."""
    import torch

    if not torch.cuda.is_available():
        print("error: scripts/bench_gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False on this machine); "
              "it does not fall back to the CPU", file=sys.stderr)
        raise SystemExit(2)
    return torch.cuda.get_device_name(0)


def tiles_per_s(spec: str, batch: int, seconds: float = 6.0, random_weights: bool = False) -> str:
    import torch

    from segtme.inference.engine import _prepare
    from segtme.models import LoadedModel, create_model, load_model, resolve_config

    dev = torch.device("cuda")
    if random_weights:
        cfg, _ = resolve_config(spec)
        lm = LoadedModel(cfg, create_model(cfg).to(dev).eval(), dev, "random-init", "bf16")
    else:
        lm = load_model(spec, "cuda", precision="bf16")
    module = _prepare(lm)  # BatchNorm folded, channels_last — what the engine runs
    t = int(lm.config.tile_size)
    try:
        x = torch.rand(batch, 3, t, t, device=dev).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                module(x)
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                module(x)
                n += 1
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        return f"{n * batch / dt:.1f}"
    except torch.cuda.OutOfMemoryError:
        return "OOM"
    finally:
        del module, lm
        torch.cuda.empty_cache()


#: a line of bench_server.py's progress output: batching, clients, mode, tiles/s, mean batch
SERVE_LINE = re.compile(r"batching (\w+)\s+clients (\d+) (\w+)\s*: *([\d.]+) tiles/s\s+mean batch ([\d.]+)")


def serve_rows(output: str) -> list[tuple[str, list[str]]]:
    """Table rows from bench_server.py's output: one row per (clients, mode) with tiles/s and the
    mean batch size, and the 4-concurrent / 4-sequential throughput ratio (issue #16: >= 1.5x on a
    GPU with micro-batching)."""
    best: dict[tuple[int, str], tuple[float, float]] = {}
    for m in SERVE_LINE.finditer(output):
        key = (int(m.group(2)), m.group(3))
        v = (float(m.group(4)), float(m.group(5)))
        if key not in best or v[0] > best[key][0]:
            best[key] = v
    rows = [(f"`segtme serve` (CUDA, batching on), {n} client{'s' if n > 1 else ''} {mode}",
             [f"{t:.1f} tiles/s (mean batch {b:.1f})"]) for (n, mode), (t, b) in sorted(best.items())]
    c, q = best.get((4, "concurrent")), best.get((4, "sequential"))
    if c and q and q[0] > 0:
        rows.append(("serve: 4 concurrent / 4 sequential (target >= 1.5x)", [f"{c[0] / q[0]:.2f}x"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per (model, batch)")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--budget", type=float, default=290.0,
                    help="seconds for the whole check; past it the serve run is stopped and the check fails (exit 1)")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    name = require_cuda()
    import torch

    batches = [int(b) for b in args.batches.split(",")]
    print(f"GPU: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    rows: list[tuple[str, list[str]]] = []
    for label, spec, rnd in (("default (shipped, 512² tiles)", "default", False),
                             ("UNI2-UperHoVer (random weights, 224² tiles)", "uni2_uperhover", True)):
        rows.append((label, [tiles_per_s(spec, b, args.seconds, rnd) for b in batches]))
        print(f"{label}: {rows[-1][1]}", flush=True)
    if not args.skip_serve:
        left = args.budget - (time.monotonic() - t_start)
        cmd = [sys.executable, str(REPO / "scripts" / "bench_server.py"), "--device", "cuda", "--clients", "1,4",
               "--batching", "on", "--repeats", "1", "--serving-repeats", "1",
               "--out", str(Path(os.environ.get("TMPDIR", "/tmp")) / "segtme_bench_server_cuda.md")]
        print(f"$ {' '.join(cmd)}", flush=True)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10.0, left))
        except subprocess.TimeoutExpired:
            print(f"error: the serve run did not finish within the {args.budget:.0f} s budget", file=sys.stderr)
            return 1
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"error: bench_server.py failed (exit {r.returncode}): {tail}", file=sys.stderr)
            return 1
        srows = serve_rows(r.stdout)
        if not srows:
            print("error: bench_server.py printed no throughput lines", file=sys.stderr)
            return 1
        serving = re.search(r"start -> SERVING \(s\): ([\d., ]+)", r.stdout)
        if serving:
            srows.append(("`segtme serve --device cuda` start -> SERVING", [f"{serving.group(1).strip()} s"]))
        rows += [(label, vals + [""] * (len(batches) - 1)) for label, vals in srows]
    print()
    print("| GPU check (bf16, channels-last, BatchNorm folded) | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---:|" * len(batches))
    for label, vals in rows:
        print(f"| {label} | " + " | ".join(vals) + " |")
    print(f"\n(tiles/s for the models; {time.monotonic() - t_start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
