#!/usr/bin/env python
"""GPU check (issue #16.5): one command on a CUDA machine with this repo and its venv, < 5 min.

Prints one table:

* forward tiles/s of the shipped ``default`` model (512² tiles) and of UNI2-UperHoVer
  (``uni2_uperhover``: ViT-G/14 + two UperNet heads of 768, **random weights**, 224² tiles), bf16
  autocast as served on CUDA (``runtime.resolve_precision``), channels-last, BatchNorm folded,
  batch 1, 4, 16, 64 (a batch that does not fit in GPU memory says "OOM");
* ``segtme serve`` on CUDA with 1 vs 4 concurrent DetectTME clients (``scripts/bench_server.py``,
  batching on), aggregate tiles/s and the concurrent / sequential ratio (target >= 1.5x).

It refuses to run without CUDA (exit 2, one line): a CPU fallback would print numbers that mean
something else.

    scripts/bench_gpu.sh                 # everything
    scripts/bench_gpu.sh --skip-serve    # forward passes only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))


def require_cuda() -> str:
    """The CUDA device name, or SystemExit(2) with one line when CUDA is not available."""
    import torch

    if os.environ.get("SEGTME_BENCH_GPU_FAKE_NO_CUDA") == "1" or not torch.cuda.is_available():
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per (model, batch)")
    ap.add_argument("--skip-serve", action="store_true")
    args = ap.parse_args(argv)
    name = require_cuda()
    import torch

    batches = [int(b) for b in args.batches.split(",")]
    print(f"GPU: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    rows = []
    for label, spec, rnd in (("default (shipped, 512² tiles)", "default", False),
                             ("UNI2-UperHoVer (random weights, 224² tiles)", "uni2_uperhover", True)):
        rows.append((label, [tiles_per_s(spec, b, args.seconds, rnd) for b in batches]))
        print(f"{label}: {rows[-1][1]}", flush=True)
    print()
    print("| model (bf16, channels-last, BatchNorm folded) | " + " | ".join(f"batch {b} tiles/s" for b in batches) + " |")
    print("|---|" + "---:|" * len(batches))
    for label, vals in rows:
        print(f"| {label} | " + " | ".join(vals) + " |")
    if not args.skip_serve:
        out = Path(os.environ.get("TMPDIR", "/tmp")) / "segtme_bench_server_cuda.md"
        cmd = [sys.executable, str(REPO / "scripts" / "bench_server.py"), "--device", "cuda", "--clients", "1,4",
               "--batching", "on", "--repeats", "1", "--serving-repeats", "1", "--out", str(out)]
        print(f"\n$ {' '.join(cmd)}", flush=True)
        r = subprocess.run(cmd)
        if r.returncode != 0:
            print(f"error: bench_server.py failed (exit {r.returncode})", file=sys.stderr)
            return r.returncode
        print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
