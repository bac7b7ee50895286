"""scripts/bench_gpu.sh refuses to run without CUDA: one line, exit 2, no CPU numbers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_gpu_refuses_without_cuda():
    import sys

    # the variable makes a CUDA machine (where this test also runs) take the refusal path too
    env = {**os.environ, "SEGTME_BENCH_GPU_FAKE_NO_CUDA": "1", "SEGTME_PYTHON": sys.executable}
    r = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh"), "--skip-serve"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "CUDA" in lines[0], r.stderr
    assert "tiles/s" not in r.stdout and "Traceback" not in r.stderr


def test_bench_gpu_refuses_without_a_python(tmp_path):
    env = {**os.environ, "SEGTME_PYTHON": str(tmp_path / "missing-python")}
    r = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: no Python")
