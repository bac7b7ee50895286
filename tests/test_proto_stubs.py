"""The committed Python gRPC stubs must be exactly what `python -m segtme.server.gen_proto` makes
from proto/segtme/v1/segtme.proto (regenerated into a temporary directory and compared)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from segtme.server import gen_proto

COMMITTED = Path(gen_proto.__file__).resolve().parent / "_proto"


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    written = gen_proto.generate(tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == set(gen_proto.GENERATED)
    drift = []
    for rel in gen_proto.GENERATED:
        fresh, committed = (tmp_path / rel), (COMMITTED / rel)
        if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
            drift.append(rel)
    assert not drift, (f"generated stubs drifted from proto/segtme/v1/segtme.proto: {drift}; "
                       "run scripts/gen_proto.sh (python -m segtme.server.gen_proto) and commit the result")


def test_generated_grpc_module_imports_inside_package() -> None:
    text = (COMMITTED / "segtme/v1/segtme_pb2_grpc.py").read_text()
    assert "from segtme.v1 import" not in text
    assert "from . import segtme_pb2 as" in text
    from segtme.server._proto.segtme.v1 import segtme_pb2, segtme_pb2_grpc

    svc = segtme_pb2.DESCRIPTOR.services_by_name["SegTME"]
    assert svc.full_name == "segtme.v1.SegTME"
    assert {m.name for m in svc.methods} == {"GetInfo", "ListModels", "DetectTME", "AnalyzeImage", "Narrate"}
    assert hasattr(segtme_pb2_grpc, "SegTMEStub") and hasattr(segtme_pb2_grpc, "add_SegTMEServicer_to_server")


def test_gen_proto_command_line(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    r = subprocess.run([sys.executable, "-m", "segtme.server.gen_proto", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "segtme/v1/segtme_pb2_grpc.py").read_bytes() == (COMMITTED / "segtme/v1/segtme_pb2_grpc.py").read_bytes()
