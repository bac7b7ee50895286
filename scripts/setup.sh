#!/usr/bin/env bash
# Create ./.venv and install segtme (editable) with the given extras. Idempotent.
#   bash scripts/setup.sh            # the runtime only (what the demo needs)
#   bash scripts/setup.sh dev,ray,parquet   # + test tools and the optional extras (what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# constraints.txt pins every package to the versions the tests last passed with (a new release
# of torch / scipy / scikit-image moves borderline nuclei). They were made on Python 3.11; on
# another Python, or with SEGTME_UNPINNED=1, the newest compatible versions are installed.
PIN=(-c constraints.txt)
pyv=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "${SEGTME_UNPINNED:-0}" = "1" ]; then PIN=()
elif [ "$pyv" != "3.11" ]; then
  echo "setup: Python $pyv, constraints.txt is for 3.11: installing unpinned versions" >&2; PIN=()
fi
stamp=".venv/.segtme-installed${EXTRAS:+-${EXTRAS//,/-}}${PIN:+-pinned}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet "${PIN[@]}" -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$stamp"
fi
