#!/usr/bin/env bash
# The one test command: sets up the venv, builds + tests the Java client core, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,ray,parquet
if [ -f scripts/java_test.sh ]; then
  bash scripts/java_test.sh
fi
exec .venv/bin/python -m pytest -q "$@"
