#!/usr/bin/env python
"""Export a shipped model's folded inference module to ONNX for the CPU runtime (issue #16).

    python scripts/export_onnx.py            # writes weights/default.onnx and weights/default_int8.onnx
    python scripts/export_onnx.py --check    # exit 1 if a shipped graph is missing or stale
    python scripts/export_onnx.py --model paget_h_shared --no-int8   # PAGET-H on the default's backbone
    python scripts/export_onnx.py --model mitosis --no-int8          # the mitosis teacher (32 px crops)

Run it whenever a shipped model's ``.safetensors`` (or the architecture part of its ``.json``)
changes: the graph records the SHA-256 of the weights file and of the architecture fields, and the
tile edge, in its metadata (``models/onnx_runtime.py`` reads them) and
tests/test_onnx_runtime.py fails when they do not match the shipped files, so a retrained
default can never ship with a stale graph. Needs the ``onnx`` extra (``onnx``, ``onnxscript``)
at export time only; ``segtme analyze`` / ``serve`` need nothing but ``onnxruntime``.

The graph: the eval-mode, BatchNorm-folded module (``registry.fold_batchnorm``, as the torch
path runs it), exported with ``torch.onnx.export(dynamo=True)`` (the legacy exporter refuses the
pyramid-pooling module's adaptive pools: 16² -> 3² is not an integer stride). Input ``x``
(batch, 3, T, T) float32 normalised RGB with T = the config's ``tile_size`` in working px
(512 for the default model); outputs ``sem`` (batch, C, T, T) logits and ``hv`` (batch, 2, T, T).
The batch is dynamic; the spatial size is fixed, because the exporter bakes the adaptive pools'
window indices for the traced size (a graph exported with symbolic H, W ran other sizes wrongly
or failed: 496 x 512 gave sem differences of 0.18, 320 x 288 an index error). Tiles of other
sizes run on the torch path (``onnx_runtime.OrtModule``). After writing, the graph is checked
against the torch module on a random batch (max |difference| <= 1e-4 x (1 + max |output|)).

The int8 variant (``<name>_int8.onnx``, opt-in at run time: ``SEGTME_RUNTIME=onnx-int8``) is the
fp32 graph statically quantised by ``onnxruntime.quantization`` (QDQ, uint8 activations, int8
weights, per tensor), calibrated on ``CALIBRATION_IMAGES`` real MoNuSeg training images that are
not in the config's held-out split (box-downsampled 2x to the working 0.5 µm/px, reflect-padded to
one tile), read from ``$SEGTME_DATA_DIR`` (default ``../shared/data``); ``--no-int8`` skips it.
Its accuracy is measured, not checked here: ``python scripts/bench_inference.py --mode onnx``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="shipped model name (weights/<name>.json + .safetensors)")
    ap.add_argument("--check", action="store_true", help="only check that the shipped .onnx matches its weights and config")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--no-int8", action="store_true", help="do not (re)write the int8 variant")
    args = ap.parse_args(argv)

    os.environ["SEGTME_RUNTIME"] = "torch"  # the reference module: eager, not a cached graph
    os.environ["SEGTME_COMPILED"] = "0"
    from segtme.models import onnx_runtime
    from segtme.models.registry import resolve_config

    cfg, wpath = resolve_config(args.model)
    cfg_path = wpath.with_suffix(".json")
    out = onnx_runtime.graph_path(wpath)
    if args.check:
        bad = 0
        for variant in ("fp32",) if args.no_int8 else ("fp32", "int8"):
            p = onnx_runtime.graph_path(wpath, variant)
            problem = onnx_runtime.stale_reason(p, cfg, wpath, variant)
            print(f"{p}: {problem or 'matches ' + wpath.name + ' and ' + cfg_path.name}")
            bad += problem is not None
        return 1 if bad else 0

    import numpy as np
    import onnx
    import torch

    from segtme.inference.engine import _prepare
    from segtme.models.registry import load_model

    torch.manual_seed(0)
    lm = load_model(args.model, "cpu", precision="fp32")
    folded = _prepare(lm).eval()
    x = sample_input(lm, 2).contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / out.name
        with torch.no_grad():
            torch.onnx.export(folded, (x,), str(tmp), input_names=["x"], output_names=list(lm.contract.outputs),
                              dynamo=True, external_data=False, opset_version=args.opset,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=256)}})
        meta = onnx_runtime.expected_metadata(cfg, wpath)
        meta["torch"] = torch.__version__
        meta["onnx_exporter"] = f"torch.onnx.export(dynamo=True), opset {args.opset}"
        _set_metadata(tmp, meta, f"segtme {args.model}: folded inference module ({cfg.arch}); regenerate with scripts/export_onnx.py")
        # check the written graph against the torch module before it replaces the shipped one
        import onnxruntime as ort

        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        for b in (1, 3):
            xb = sample_input(lm, b)
            with torch.inference_mode():
                ref = folded(xb.contiguous(memory_format=torch.channels_last))
            got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": xb.numpy()})))
            for k, r in ref.items():
                err = float(np.abs(got[k] - r.numpy()).max())
                tol = 1e-4 * (1.0 + float(r.abs().max()))
                print(f"check batch {b} {k}: max |onnx - torch| = {err:.2e} (tolerance {tol:.2e})")
                if not err <= tol:  # NaN fails too
                    print("the exported graph does not reproduce the torch module; not written", file=sys.stderr)
                    return 1
        shutil.move(str(tmp), str(out))
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s; "
              f"metadata {json.dumps({k: meta[k] for k in ('weights_sha256', 'architecture_sha256', 'tile')})}")
        if not args.no_int8:
            q_out = onnx_runtime.graph_path(wpath, "int8")
            q_tmp = Path(d) / q_out.name
            names = quantise(out, q_tmp, cfg, Path(d))
            qmeta = {**meta, **onnx_runtime.expected_metadata(cfg, wpath, "int8"),
                     "quantisation": "onnxruntime.quantization.quantize_static QDQ, activations uint8, weights int8, "
                                     "per tensor, MinMax calibration",
                     "calibration": "MoNuSeg training images (not held out), box-downsampled 2x: " + ", ".join(names)}
            _set_metadata(q_tmp, qmeta, f"segtme {args.model}: int8 (static QDQ) of {out.name}; regenerate with "
                          "scripts/export_onnx.py")
            shutil.move(str(q_tmp), str(q_out))
            print(f"wrote {q_out} ({q_out.stat().st_size / 1e6:.1f} MB), calibrated on {len(names)} images")
    return 0


def sample_input(lm, batch: int):
    """A (batch, 3, T, T) float32 input in the module's own domain: random RGB as the engine feeds
    a dense model (normalised with ``cfg.io``: mean / std) or as ``mitosis.detect`` feeds the
    mitosis classifier (RGB in [0, 1]; it takes the log of it, so normalised values would be NaN)."""
    import torch

    from segtme.mitosis.zoo import is_mitosis

    cfg = lm.config
    T = int(cfg.tile_size)
    x = torch.rand(batch, 3, T, T)
    if is_mitosis(cfg):
        return x
    mean = torch.tensor(cfg.io.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
    std = torch.tensor(cfg.io.std, dtype=torch.float32).reshape(1, 3, 1, 1)
    return (x - mean) / std


#: real training images the int8 variant is calibrated on (not in the held-out split)
CALIBRATION_IMAGES = 8


def _set_metadata(path: Path, meta: dict[str, str], doc: str) -> None:
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in sorted(meta.items()):
        p = m.metadata_props.add()
        p.key, p.value = k, str(v)
    m.doc_string = doc
    onnx.save(m, str(path))


def quantise(src: Path, dst: Path, cfg, work: Path) -> list[str]:
    """Write the int8 (static QDQ) variant of ``src`` to ``dst``; returns the calibration image names."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from PIL import Image

    data = Path(os.environ.get("SEGTME_DATA_DIR", REPO.parent / "shared" / "data")) / "monuseg-train"
    if not (data / "index.json").is_file():
        raise SystemExit(f"int8 calibration needs the MoNuSeg training images at {data} (set SEGTME_DATA_DIR), "
                         "or pass --no-int8")
    items = json.loads((data / "index.json").read_text())
    held = set(cfg.extra.get("held_out", {}).get("monuseg", []))
    chosen = [it for it in items if Path(it["image"]).stem not in held][:CALIBRATION_IMAGES]
    T = int(cfg.tile_size)
    mean = np.asarray(cfg.io.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(cfg.io.std, np.float32).reshape(1, 3, 1, 1)

    def tile(it) -> np.ndarray:
        im = Image.open(data / it["image"]).convert("RGB")
        a = np.asarray(im.resize((im.width // 2, im.height // 2), Image.BOX))[:T, :T]
        a = np.pad(a, ((0, T - a.shape[0]), (0, T - a.shape[1]), (0, 0)), mode="reflect")
        return np.ascontiguousarray((a[None].transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std)

    calib = [tile(it) for it in chosen]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            v = next(self.it, None)
            return None if v is None else {"x": v}

    pre = work / "pre.onnx"
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return [Path(it["image"]).stem for it in chosen]


if __name__ == "__main__":
    sys.exit(main())
