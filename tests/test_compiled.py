"""The compiled (traced TorchScript) load path of the shipped default model (models/compiled.py):
same maps and nuclei as the eager model on real H&E, used only where eligible, and a fallback to
the eager path for everything else (other models, overrides, a broken cache file).

These tests pin ``SEGTME_RUNTIME=torch``: with ``onnxruntime`` installed the shipped model
otherwise loads as its ONNX graph (models/onnx_runtime.py, tests/test_onnx_runtime.py), and the
TorchScript module is what that path and the non-ONNX setups fall back to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtme.inference.engine import forward_tiles
from segtme.models import compiled, load_model
from segtme.models.compiled import CompiledModule
from segtme.pipeline import segment_image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "python" / "segtme" / "samples" / "he_tcia_stardist.jpg"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTME_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SEGTME_COMPILED", raising=False)
    monkeypatch.setenv("SEGTME_RUNTIME", "torch")
    return tmp_path / "cache" / "compiled"


def _real_tiles(shared_data: Path) -> list[np.ndarray]:
    """Real H&E at 0.5 µm/px: a MoNuSeg image (0.25 µm/px, box-downsampled 2x) and the bundled
    sample, cut to sizes that differ from the traced shape (the graph must be shape-generic)."""
    items = json.loads((shared_data / "monuseg-train" / "index.json").read_text())
    rgb = Image.open(shared_data / "monuseg-train" / items[0]["image"]).convert("RGB")
    half = np.asarray(rgb.resize((rgb.width // 2, rgb.height // 2), Image.BOX))
    sample = np.asarray(Image.open(SAMPLE).convert("RGB"))
    return [half[:320, :288], half[100:356, 50:306], sample[:288, :480]]


def test_compiled_equals_eager_maps_and_nuclei(cache, shared_data):
    eager = load_model("default", "cpu", precision="fp32")  # cold cache: eager, writes the file
    assert not isinstance(eager.module, CompiledModule)
    files = list(cache.glob("default-*.torchscript"))
    assert len(files) == 1
    fast = load_model("default", "cpu", precision="fp32")
    assert isinstance(fast.module, CompiledModule) and fast.module.path == files[0]
    assert fast.source == eager.source and fast.config == eager.config
    tiles = _real_tiles(shared_data)
    a, b = forward_tiles(eager, tiles), forward_tiles(fast, tiles)
    for ta, tb in zip(a, b):
        assert ta.keys() == tb.keys() == {"prob", "hv"}
        for k in ta:
            assert ta[k].shape == tb[k].shape
            np.testing.assert_allclose(tb[k], ta[k], atol=1e-5, rtol=0)
    # the whole product path at 40x (resampled to the working 0.5 µm/px), fp32: the same nuclei
    items = json.loads((shared_data / "monuseg-train" / "index.json").read_text())
    rgb = np.asarray(Image.open(shared_data / "monuseg-train" / items[1]["image"]).convert("RGB"))[:600, :600]
    na, nb = segment_image(rgb, 0.25, eager), segment_image(rgb, 0.25, fast)
    assert len(na) > 50 and len(na) == len(nb)
    np.testing.assert_allclose(nb.centroid, na.centroid, atol=1e-6)
    np.testing.assert_array_equal(nb.class_id, na.class_id)


def test_compiled_bf16_close_to_eager_bf16(cache, shared_data):
    eager = load_model("default", "cpu", precision="bf16")
    fast = load_model("default", "cpu", precision="bf16")
    assert isinstance(fast.module, CompiledModule)
    tiles = _real_tiles(shared_data)
    for ta, tb in zip(forward_tiles(eager, tiles), forward_tiles(fast, tiles)):
        # both run under bf16 autocast: differences are bf16 rounding of the same ops
        assert np.abs(ta["prob"] - tb["prob"]).max() < 0.05
        assert np.abs(ta["hv"] - tb["hv"]).max() < 0.05


def test_fallbacks_to_eager(cache, tmp_path, monkeypatch):
    load_model("default", "cpu")  # writes the cache file
    (path,) = cache.glob("default-*.torchscript")
    # an explicit weights file: eager (the file may differ from the shipped one)
    w = Path(compiled.WEIGHTS_DIR / "default.safetensors")
    assert not isinstance(load_model("default", "cpu", weights=w).module, CompiledModule)
    # turned off
    monkeypatch.setenv("SEGTME_COMPILED", "0")
    assert not isinstance(load_model("default", "cpu").module, CompiledModule)
    monkeypatch.delenv("SEGTME_COMPILED")
    # another family / a rule-based model: never compiled
    assert not isinstance(load_model("classical", "cpu").module, CompiledModule)
    # a broken cache file: removed, eager used, a good file written again
    path.write_bytes(b"not a torchscript file")
    lm = load_model("default", "cpu")
    assert not isinstance(lm.module, CompiledModule)
    assert path.is_file() and path.read_bytes()[:2] == b"PK"  # a zip archive again
    assert isinstance(load_model("default", "cpu").module, CompiledModule)
    # a changed config gives another cache file (content-addressed), never the stale one
    cfg = lm.config.replace(extra={**lm.config.extra, "note": "changed"})
    assert compiled.cache_path(cfg, w) != path


def test_unwritable_cache_keeps_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTME_RUNTIME", "torch")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SEGTME_CACHE_DIR", str(blocker))  # a file: the cache dir cannot be made
    lm = load_model("default", "cpu")
    assert not isinstance(lm.module, CompiledModule)
    assert len(segment_image(np.asarray(Image.open(SAMPLE).convert("RGB")), 0.5, lm)) > 100


def test_warm_start_imports_no_timm_transformers_torchvision(cache):
    load_model("default", "cpu")  # writes the cache file
    code = (
        "import sys\n"
        "from segtme.models import load_model\n"
        "lm = load_model('default', 'cpu')\n"
        "print(type(lm.module).__name__, *sorted(m for m in ('timm', 'transformers', 'torchvision', 'torch._dynamo')"
        " if m in sys.modules))\n"
    )
    env = {**os.environ, "SEGTME_CACHE_DIR": str(cache.parent), "SEGTME_RUNTIME": "torch"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["CompiledModule"], out.stdout
