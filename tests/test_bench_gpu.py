"""scripts/bench_gpu.sh refuses to run without CUDA: one line, exit non-zero, no CPU numbers; and
its one table takes the serve rows from bench_server.py's output."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_gpu_refuses_without_cuda():
    # CUDA_VISIBLE_DEVICES="" hides every GPU from torch, so a CUDA machine takes the refusal path too
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "SEGTME_PYTHON": sys.executable}
    r = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "CUDA" in lines[0], r.stderr
    assert "does not fall back to the CPU" in lines[0]
    assert r.stdout == "" and "Traceback" not in r.stderr  # nothing measured, nothing printed


def test_bench_gpu_refuses_without_a_python(tmp_path):
    env = {**os.environ, "SEGTME_PYTHON": str(tmp_path / "missing-python")}
    r = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: no Python")


def test_serve_rows_from_bench_server_output():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "scripts" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = ("start -> SERVING (s): 3.10\n"
           "batching on  clients 1 concurrent:  40.00 tiles/s  mean batch 1.00  (0.2 s; jobs 0.2 s)\n"
           "batching on  clients 4 sequential:  40.00 tiles/s  mean batch 1.00  (0.8 s; jobs 0.2, 0.2 s)\n"
           "batching on  clients 4 concurrent:  90.00 tiles/s  mean batch 3.50  (0.4 s; jobs 0.4, 0.4 s)\n")
    rows = dict(mod.serve_rows(out))
    assert rows["`segtme serve` (CUDA, batching on), 4 clients concurrent"] == ["90.0 tiles/s (mean batch 3.5)"]
    assert rows["serve: 4 concurrent / 4 sequential (target >= 1.5x)"] == ["2.25x"]
    assert mod.serve_rows("nothing here") == []
