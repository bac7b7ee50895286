#!/usr/bin/env bash
# GPU check (issue #16.5): tiles/s of the default model and UNI2-UperHoVer (bf16, batch 1-64,
# channels-last) and `segtme serve` on CUDA with 1 vs 4 clients; one table, < 5 min.
# Needs a CUDA machine with this repo and its venv (.venv); refuses to run on CPU (exit 2).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${SEGTME_PYTHON:-$REPO/.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "error: no Python at $PY (create the venv first, or set SEGTME_PYTHON)" >&2
  exit 2
fi
exec "$PY" "$REPO/scripts/bench_gpu.py" "$@"
