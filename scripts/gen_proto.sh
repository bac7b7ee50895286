#!/usr/bin/env sh
# Regenerate the committed Python gRPC stubs (python/segtme/server/_proto/) from proto/segtme/v1/segtme.proto.
# Needs grpcio-tools (dev dependency). The drift test: tests/test_proto_stubs.py.
set -eu
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m segtme.server.gen_proto "$@"
