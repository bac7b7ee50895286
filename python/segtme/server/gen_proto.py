"""Generate the Python gRPC stubs from ``proto/segtme/v1/segtme.proto``.

The one documented command (also wrapped by ``scripts/gen_proto.sh``)::

    python -m segtme.server.gen_proto            # writes python/segtme/server/_proto/segtme/v1/
    python -m segtme.server.gen_proto --out DIR  # writes DIR/segtme/v1/ (the drift test uses this)

It runs ``grpc_tools.protoc`` (grpcio-tools, a dev dependency) with ``--python_out``,
``--pyi_out`` and ``--grpc_python_out``, then makes the stubs importable *inside* this package:
protoc writes ``from segtme.v1 import segtme_pb2`` into ``segtme_pb2_grpc.py``, which would
resolve to the top-level ``segtme`` package (this project), so the generator **rewrites that one
import line** to the relative ``from . import segtme_pb2``. It also writes empty ``__init__.py``
files so ``segtme.server._proto.segtme.v1`` is a normal sub-package. Nothing else is edited:
``tests/test_proto_stubs.py`` regenerates into a temporary directory and compares byte for byte.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

#: repository root (…/python/segtme/server/gen_proto.py -> parents[3])
REPO = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "proto"
PROTO_FILE = "segtme/v1/segtme.proto"
DEFAULT_OUT = Path(__file__).resolve().parent / "_proto"

_ABS_IMPORT = re.compile(r"^from segtme\.v1 import (\w+) as (\w+)$", re.MULTILINE)
_INIT_TEXT = '"""Generated gRPC stubs for segtme.v1 (see segtme.server.gen_proto). Do not edit."""\n'
#: files the generator owns, relative to the output root
GENERATED = (
    "__init__.py",
    "segtme/__init__.py",
    "segtme/v1/__init__.py",
    "segtme/v1/segtme_pb2.py",
    "segtme/v1/segtme_pb2.pyi",
    "segtme/v1/segtme_pb2_grpc.py",
)


def generate(out_dir: Path = DEFAULT_OUT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc into ``out_dir`` and fix the package-relative import; return the written files."""
    try:
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - dev dependency missing
        raise SystemExit("grpcio-tools is needed to generate stubs: pip install grpcio-tools") from e
    import grpc_tools

    out_dir = Path(out_dir)
    (out_dir / "segtme" / "v1").mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(proto_root / PROTO_FILE),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}: {' '.join(args)}")
    grpc_file = out_dir / "segtme" / "v1" / "segtme_pb2_grpc.py"
    text = grpc_file.read_text()
    fixed, n = _ABS_IMPORT.subn(r"from . import \1 as \2", text)
    if n != 1:
        raise SystemExit(f"expected exactly one 'from segtme.v1 import' line in {grpc_file}, found {n}")
    grpc_file.write_text(fixed)
    for init in ("__init__.py", "segtme/__init__.py", "segtme/v1/__init__.py"):
        (out_dir / init).write_text(_INIT_TEXT)
    return [out_dir / g for g in GENERATED]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segtme.server.gen_proto", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output root (default: {DEFAULT_OUT})")
    args = p.parse_args(argv)
    for f in generate(args.out):
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
