#!/usr/bin/env bash
# The one set-up-and-run command: creates ./.venv, installs segtme, and analyses the bundled real
# H&E sample with the shipped default model, writing GeoJSON, overlay, CSV and the TME report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-out/demo}
SAMPLE=$(.venv/bin/python -c "from segtme.samples import sample_path; print(sample_path())")
MPP=$(.venv/bin/python -c "from segtme.samples import sample_mpp; print(sample_mpp())")
.venv/bin/segtme analyze "$SAMPLE" --mpp "$MPP" --model default --out "$OUT"
echo "wrote: $(ls "$OUT" | tr '\n' ' ')"
echo "narrative: $(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['narrative'])" "$OUT/tme.json")"
