"""`segtme serve` as a subprocess (the way the QuPath extension's end-to-end test starts it), and
TLS + bearer token in process.

The subprocess serves a small randomly initialised UperHoVer (the ViT-taps toy preset, saved to a
temporary .json + .safetensors): its nuclei are meaningless, the test checks the command, the
readiness line, a full DetectTME round trip through the real HV post-processing, the token file
and graceful shutdown on SIGTERM.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from segtme.server._proto.segtme.v1 import segtme_pb2 as pb
from segtme.server._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch
    from safetensors.torch import save_file

    from segtme.models.registry import create_model, presets

    d = tmp_path_factory.mktemp("tiny")
    cfg = presets()["uperhover_vit_tiny"].replace(name="tinyvit", weights="tinyvit.safetensors")
    torch.manual_seed(0)
    m = create_model(cfg)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / "tinyvit.safetensors"))
    cfg.to_json(d / "tinyvit.json")
    return d / "tinyvit.json"


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early ({proc.returncode}): {proc.stderr.read()}")
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            return proc.stdout.readline()
    raise AssertionError("no readiness line from segtme serve")


def test_serve_subprocess_ready_line_roundtrip_and_sigterm(tiny_model, tmp_path) -> None:
    token_file = tmp_path / "token.txt"
    token_file.write_text("tok-123\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "segtme.cli", "serve", "--port", "0", "--model", str(tiny_model), "--device", "cpu",
           "--max-batch", "2", "--token-file", str(token_file), "--grace", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        line = _read_line(proc, 120)
        assert line.startswith("SEGTME_SERVER_LISTENING port=") and line.endswith("\n")
        port = int(line.strip().split("=", 1)[1])
        assert port > 0
        md = [("authorization", "Bearer tok-123")]
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.SegTMEStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetInfo(pb.GetInfoRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = stub.GetInfo(pb.GetInfoRequest(), metadata=md, timeout=10)
        assert info.models_loaded == ["tinyvit"] and info.max_batch == 2
        # a short DetectTME job through the real UperHoVer + HV watershed path
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "PNG")
        reqs = [pb.DetectRequest(config=pb.JobConfig(image_mpp=0.5, job_id="cli"))]
        for k in range(2):
            reqs.append(pb.DetectRequest(tile=pb.Tile(index=k, x=112 * k, y=0, downsample=1.0, width=112, height=112,
                                                      core=pb.Rect(x=112 * k, y=0, width=112, height=112),
                                                      encoding=pb.PNG, pixels=buf.getvalue())))
        out = list(stub.DetectTME(iter(reqs), metadata=md, timeout=60))
        kinds = [r.WhichOneof("msg") for r in out]
        assert kinds[-1] == "report" and kinds.count("progress") >= 3
        n = sum(r.nuclei.count for r in out if r.WhichOneof("msg") == "nuclei")
        assert out[-1].report.nuclei_total == n
        assert json.loads(out[-1].report.report_json)["raw_data"]["N_total"] == n
        ch.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert "shutting down" in err and '"rpc": "DetectTME"' in err and '"job_id": "cli"' in err
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_bad_arguments(tmp_path, capsys) -> None:
    from segtme.cli import main

    assert main(["serve", "--port", "0", "--tls-cert", "x.pem"]) == 2
    assert "--tls-key" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["serve", "--port", "0", "--token-file", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed (needed to make a test certificate)")
def test_tls_with_token(tmp_path) -> None:
    from segtme.server import fixture_model
    from segtme.server.service import ServerConfig, build_server

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    fixture_model.register()
    mj = fixture_model.save_fixture_model(tmp_path / "m")
    srv = build_server(ServerConfig(port=0, models=[str(mj)], device="cpu", token="t0k", tls_cert=str(cert),
                                    tls_key=str(key), warmup=False))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        ch = grpc.secure_channel(f"localhost:{srv.port}", grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials("t0k")))
        info = pb_grpc.SegTMEStub(ch).GetInfo(pb.GetInfoRequest(), timeout=10)
        assert info.default_model == "fixture"
        ch.close()
        ch2 = grpc.secure_channel(f"localhost:{srv.port}", creds)  # TLS but no token
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.SegTMEStub(ch2).GetInfo(pb.GetInfoRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ch2.close()
        ch3 = grpc.insecure_channel(f"localhost:{srv.port}")  # plaintext to a TLS port fails
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.SegTMEStub(ch3).GetInfo(pb.GetInfoRequest(), timeout=5)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        ch3.close()
    finally:
        srv.stop(0)
