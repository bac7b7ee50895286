"""Fast load path for shipped models: a folded, traced TorchScript module cached on disk.

Building the eager default model imports ``timm`` (which pulls in ``torchvision`` and
``torch._dynamo``) and the UperNet head imports ``transformers``: 2-4 s of imports on a 2-core
machine before any pixel is processed, paid by every ``segtme analyze`` and ``segtme serve``.
The inference module itself needs none of them. So the first eager load of a shipped model on
the CPU also writes its *inference* module — BatchNorm folded (``registry.fold_batchnorm``),
channels_last, traced with ``torch.jit.trace`` (not frozen: its folded weights stay visible as
parameters) — to a cache file, and every later
load reads that file with ``torch.jit.load`` (``import torch`` only).

* When ``SEGTME_RUNTIME`` selects ONNX Runtime (``models/onnx_runtime.py``) the shipped default
  model loads as its prebuilt ONNX graph instead, without importing torch; this TorchScript module
  is then the fallback (no ``onnxruntime``, explicit bf16, a stale graph) and the module that runs
  inputs of a size the graph does not take (imported and loaded on first need).
* Eligible: ``arch == "uperhover"`` with weights from the package's ``models/weights`` folder
  (the shipped models), device CPU, no ``--weights`` / backbone-weights override. Everything
  else (trained or random models, other families, CUDA) keeps the eager path.
* The cache key is the SHA-256 of the weights file's bytes, the config's JSON, the torch
  version and ``FORMAT``; a changed weights file, config or torch gives a new file, never a stale
  one. A file that cannot be read is removed and the eager path is used (and writes it anew).
* Numerics: the traced graph runs the same aten ops as the folded eager module (fp32: identical
  outputs; bf16 autocast applies to it as to the eager module) — tests/test_compiled.py checks
  maps and nuclei against the eager model on real H&E.
* Where: ``$SEGTME_CACHE_DIR/compiled`` (default ``$XDG_CACHE_HOME/segtme`` or
  ``~/.cache/segtme``); ``SEGTME_COMPILED=0`` turns the fast path off. Written atomically
  (temporary file + rename), so concurrent first runs cannot leave a half-written file.

Imports only the standard library, torch and ``models.config`` (a leaf for the registry, which
calls it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig

log = logging.getLogger(__name__)

#: bump when the traced module's inputs/outputs or the way it is built change
FORMAT = 1
#: the input the module is traced with (B, 3, H, W); the traced graph is shape-generic
TRACE_SHAPE = (2, 3, 256, 256)
WEIGHTS_DIR = Path(__file__).with_name("weights")


class CompiledModule(nn.Module):
    """The inference module of a shipped model loaded from its TorchScript file.

    ``forward(x)`` = the eager folded module's ``forward``: x (B, 3, H, W) normalised RGB (any H,
    W multiple of the config's ``pad_multiple``) -> ``{"sem": (B, C, H, W), "hv": (B, 2, H, W)}``.
    ``segtme_prepared`` tells ``inference.engine`` that BatchNorm is already folded and the module
    is channels_last (nothing left to prepare)."""

    segtme_prepared = True

    def __init__(self, scripted: torch.jit.ScriptModule, path: Path) -> None:
        super().__init__()
        self.scripted = scripted
        self.path = path

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.scripted(x)


def enabled() -> bool:
    """False when ``SEGTME_COMPILED`` is 0/false/no/off."""
    return os.environ.get("SEGTME_COMPILED", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    base = os.environ.get("SEGTME_CACHE_DIR")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segtme")
    return Path(base) / "compiled"


def eligible(cfg: ModelConfig, weights: Path | None, device: torch.device) -> bool:
    """True when ``cfg`` + ``weights`` is a shipped UperHoVer model on the CPU (see the module doc)."""
    if not enabled() or device.type != "cpu" or cfg.arch != "uperhover" or weights is None:
        return False
    try:
        return weights.is_file() and weights.resolve().parent == WEIGHTS_DIR.resolve()
    except OSError:
        return False


def cache_path(cfg: ModelConfig, weights: Path) -> Path:
    """The cache file for ``cfg`` with ``weights`` (content-addressed, see the module doc)."""
    h = hashlib.sha256()
    h.update(f"segtme-compiled-{FORMAT}|torch-{torch.__version__}|".encode())
    h.update(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return cache_dir() / f"{cfg.name}-{h.hexdigest()[:24]}.torchscript"


def load(cfg: ModelConfig, weights: Path, device: torch.device) -> CompiledModule | None:
    """The cached compiled module for ``cfg`` + ``weights`` on ``device``, or None (no file yet, or
    an unreadable one, which is then removed)."""
    try:
        p = cache_path(cfg, weights)
    except OSError:
        return None
    if not p.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+: "torch.jit.load is deprecated"
            scripted = torch.jit.load(str(p), map_location=device)
    except Exception as e:  # a truncated / foreign / incompatible file: drop it, use the eager path
        log.warning("compiled model %s unreadable (%s); using the eager model", p, e)
        try:
            p.unlink()
        except OSError:
            pass
        return None
    scripted.eval()
    log.debug("compiled model loaded from %s", p)
    return CompiledModule(scripted, p).eval()


def export(folded: nn.Module, cfg: ModelConfig, weights: Path) -> Path | None:
    """Trace ``folded`` (the eval-mode, BatchNorm-folded, channels_last inference module of
    ``cfg`` + ``weights``, e.g. ``inference.engine._prepare``'s) and write it to its cache file
    atomically. Returns the path, or None when it cannot be written (read-only home, full disk:
    the eager path simply stays in use)."""
    try:
        p = cache_path(cfg, weights)
        p.parent.mkdir(parents=True, exist_ok=True)
        x = torch.randn(*TRACE_SHAPE).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings (shape-dependent Python ints), deprecation
            traced = torch.jit.trace(folded.eval(), x, strict=False, check_trace=False)
        fd, tmp = tempfile.mkstemp(prefix=".segtme-", suffix=".tmp", dir=p.parent)
        os.close(fd)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(traced, tmp)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except Exception as e:  # never fail a run because the cache could not be written
        log.debug("compiled model not written: %s", e)
        return None
    log.debug("compiled model written to %s", p)
    return p
