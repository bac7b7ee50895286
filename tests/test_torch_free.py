"""Issue #16: the shipped default model on the CPU, run by ONNX Runtime, never imports torch.

In a fresh interpreter with ``SEGTME_RUNTIME=onnx``: ``segtme analyze`` (the CLI's ``main``),
``segtme.pipeline.analyze`` on an array, and a ``segtme serve`` server (start, warm-up, an
AnalyzeImage request) run, and at the end neither torch nor timm / transformers / torchvision is
in ``sys.modules``. The same CLI run with ``SEGTME_RUNTIME=torch --precision fp32`` (the torch
module) gives the same nuclei: the same count, classes and outlines (centroids within 0.01 px:
ONNX Runtime and torch agree to ~1e-5 on the maps).

Image: a 2 x 2 mosaic of real MoNuSeg images, 2000² px at 0.25 µm/px (1000² working px: 3 x 3
overlapping 512² tiles, blended), written to a PNG; the server gets a 1000² px crop (500²
working px: one tile, padded to 512² by the engine).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_monuseg

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.data

HEAVY = ("torch", "timm", "transformers", "torchvision")

#: run in a fresh interpreter: argv = png, out dir, mode ("onnx": also pipeline.analyze + server)
CHILD = r"""
import io, json, sys
png, out, mode = sys.argv[1:4]
from segtme.cli import main
extra = ["--precision", "fp32"] if mode == "torch" else []
rc = main(["analyze", png, "--mpp", "0.25", "--out", out, "--no-progress", "--no-overlay", *extra])
assert rc == 0, rc
res = {"heavy_after_cli": [m for m in %(heavy)r if m in sys.modules]}
if mode == "onnx":
    import numpy as np
    from PIL import Image
    from segtme.pipeline import analyze
    rgb = np.asarray(Image.open(png).convert("RGB"))
    r = analyze(rgb[:1000, :1000], 0.25)
    res["pipeline_nuclei"] = len(r.nuclei)
    res["pipeline_module"] = type(r.model.module).__name__
    from segtme.server._proto.segtme.v1 import segtme_pb2 as pb
    from segtme.server._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc
    from segtme.server.service import ServerConfig, build_server
    import grpc
    srv = build_server(ServerConfig(port=0, models=["default"], device="cpu", max_batch=1, warmup=False))
    try:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb[:1000, :1000])).save(buf, format="PNG")
        ch = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        rep = pb_grpc.SegTMEStub(ch).AnalyzeImage(
            pb.AnalyzeImageRequest(image_mpp=0.25, encoding=pb.PNG, pixels=buf.getvalue()), timeout=120)
        res["server_nuclei"] = rep.report.nuclei_total
        ch.close()
    finally:
        srv.stop(1)
res["heavy_at_end"] = [m for m in %(heavy)r if m in sys.modules]
print("RESULT " + json.dumps(res))
""" % {"heavy": HEAVY}


def _child(png: Path, out: Path, mode: str, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SEGTME_COMPILED", "SEGTME_RUNTIME")}
    env.update(SEGTME_RUNTIME=mode, SEGTME_CACHE_DIR=str(tmp / "cache"))
    p = subprocess.run([sys.executable, "-c", CHILD, str(png), str(out), mode], capture_output=True, text=True,
                       env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _nuclei(out: Path) -> list[dict[str, str]]:
    """The CSV's rows without the per-run object id (the first line is the provenance comment)."""
    with open(out / "nuclei.csv", encoding="utf-8") as f:
        lines = f.read().splitlines()[1:]
    rows = list(csv.DictReader(lines))
    for r in rows:
        r.pop("Object ID", None)
    return rows


def test_onnx_product_path_never_imports_torch_and_equals_torch_fp32(tmp_path):
    ims = [load_monuseg(6)[k][0][:1000, :1000] for k in (1, 3, 4, 5)]
    rgb = np.concatenate([np.concatenate(ims[:2], 1), np.concatenate(ims[2:], 1)], 0)
    png = tmp_path / "mosaic.png"
    Image.fromarray(rgb).save(png)

    a = _child(png, tmp_path / "onnx", "onnx", tmp_path)
    assert a["heavy_after_cli"] == [] and a["heavy_at_end"] == [], a
    assert a["pipeline_module"] == "OrtModule" and a["pipeline_nuclei"] > 100
    assert a["server_nuclei"] == a["pipeline_nuclei"]  # the same 1000² image through AnalyzeImage

    b = _child(png, tmp_path / "torch", "torch", tmp_path)
    assert "torch" in b["heavy_after_cli"]  # the check can see torch: the torch path loads it
    na, nb = _nuclei(tmp_path / "onnx"), _nuclei(tmp_path / "torch")
    assert len(na) == len(nb) > 1200
    xy = ("Centroid X px", "Centroid Y px")
    ca = np.array([[float(r[k]) for k in xy] for r in na])
    cb = np.array([[float(r[k]) for k in xy] for r in nb])
    assert np.abs(ca - cb).max() < 0.01
    assert [r["Classification"] for r in na] == [r["Classification"] for r in nb]
    area = "Nucleus: Area µm^2"
    assert [r[area] for r in na] == [r[area] for r in nb]


LOOKUP = r"""
import sys
from segtme import runtime
from segtme.models import contract, presets, resolve_config
from segtme.models.registry import device_type
cfg, w = resolve_config("default")
c = contract(cfg)
print("LOOKUP", c.product, c.instances, ",".join(c.outputs), device_type("cpu"), [m for m in %(heavy)r if m in sys.modules])
runtime.set_torch_threads(1)  # before any torch: remembered, used by ONNX Runtime, applied when torch loads
import numpy as np
from segtme.inference.engine import forward_tiles
from segtme.models import load_model
lm = load_model("default", "cpu")
forward_tiles(lm, [np.full((512, 512, 3), 200, np.uint8)])
print("ORT", type(lm.module).__name__, lm.device.type, lm.module.threads, [m for m in %(heavy)r if m in sys.modules])
forward_tiles(lm, [np.full((200, 300, 3), 200, np.uint8)])  # not the graph's tile: the torch module
import torch
print("FALLBACK", lm.module.torch_batches, torch.get_num_threads())
presets()  # every family file: torch from here on is expected
""" % {"heavy": HEAVY}


def test_lookups_and_threads_without_torch_then_the_torch_fallback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SEGTME_COMPILED", "SEGTME_RUNTIME")}
    env.update(SEGTME_RUNTIME="onnx", SEGTME_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-c", LOOKUP], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = {ln.split()[0]: ln.split(None, 1)[1] for ln in p.stdout.splitlines() if ln.split()[:1] in (["LOOKUP"], ["ORT"], ["FALLBACK"])}
    assert out["LOOKUP"] == "nuclei maps sem,hv cpu []"
    assert out["ORT"] == "OrtModule cpu 1 []"
    assert out["FALLBACK"] == "1 1"


def test_paget_h_shared_with_the_mitosis_teacher_runs_without_torch_and_equals_torch_fp32(tmp_path):
    """PAGET-H on the default's backbone (``paget_h_shared``) and the mitosis teacher, both shipped
    with ONNX graphs: ``segtme analyze --model paget_h_shared`` on a 1500 x 1000 working-px mosaic
    (chunked: 2 x 1 chunks of 1024 px) never imports torch in ONNX Runtime mode, and gives the
    same nuclei, classes (Mitotic cell included) and mitosis probabilities (within 1e-3) as the
    torch modules in fp32."""
    ims = [load_monuseg(6)[k][0][:1000, :1000] for k in range(6)]
    half = [np.asarray(Image.fromarray(a).resize((500, 500), Image.BOX)) for a in ims]  # 0.25 -> 0.5 µm/px
    rgb = np.concatenate([np.concatenate(half[:3], 1), np.concatenate(half[3:], 1)], 0)
    png = tmp_path / "mosaic.png"
    Image.fromarray(rgb).save(png)
    code = r"""
import sys
from segtme.cli import main
out, mode = sys.argv[1:3]
extra = ["--precision", "fp32"] if mode == "torch" else []
rc = main(["analyze", %(png)r, "--mpp", "0.5", "--model", "paget_h_shared", "--out", out, "--no-progress",
           "--no-overlay", *extra])
assert rc == 0, rc
print("HEAVY", ",".join(m for m in %(heavy)r if m in sys.modules) or "-")
""" % {"png": str(png), "heavy": HEAVY}
    rows, heavy = {}, {}
    for mode in ("onnx", "torch"):
        env = {k: v for k, v in os.environ.items() if k not in ("SEGTME_COMPILED", "SEGTME_RUNTIME")}
        env.update(SEGTME_RUNTIME=mode, SEGTME_CACHE_DIR=str(tmp_path / "cache"))
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path / mode), mode], capture_output=True, text=True,
                           env=env, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        heavy[mode] = next(ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("HEAVY "))
        rows[mode] = _nuclei(tmp_path / mode)
    assert heavy["onnx"] == "-" and "torch" in heavy["torch"], heavy
    na, nb = rows["onnx"], rows["torch"]
    assert len(na) == len(nb) > 1000
    assert [r["Classification"] for r in na] == [r["Classification"] for r in nb]
    assert {"Epithelial cell", "Lymphocyte"} <= {r["Classification"] for r in na}
    xy = ("Centroid X px", "Centroid Y px")
    assert np.abs(np.array([[float(r[k]) for k in xy] for r in na])
                  - np.array([[float(r[k]) for k in xy] for r in nb])).max() < 0.01
    for k in ("Mitosis: probability", "Mitosis: atypical probability", "Class probability"):
        d = np.abs(np.array([float(r[k]) for r in na]) - np.array([float(r[k]) for r in nb]))
        assert d.max() < 1e-3, (k, d.max())
