"""CPU runtime of the shipped models in ONNX Runtime: their prebuilt ONNX graphs.

A shipped model's folded inference module (BatchNorm folded, as the torch path runs it) is
exported once, at ship time, by ``scripts/export_onnx.py --model NAME`` to ``weights/<name>.onnx``
(fp32) beside its ``<name>.safetensors`` — for the default model (also ``<name>_int8.onnx``,
static QDQ int8), PAGET-H on its backbone (``paget_h_shared``) and the mitosis teacher
(``mitosis``), so PAGET-H with the mitosis teacher runs torch-free too (tests/test_torch_free.py;
2026-12-07, 4000² px at 0.5 µm/px on 2 AVX2 cores: 65.5 vs 75.7 CPU s and 1.33 vs 1.92 GiB peak
against the torch modules, docs/paget.md). The MiT-B0 student (``paget_s`` / ``paget_h``) has no
graph and runs in torch. On the CPU,
``registry.load_model`` can load a graph into an ONNX Runtime session instead of building the
torch module, and then the whole inference path (``segtme analyze``, ``pipeline.analyze``,
``segtme serve``) runs without importing torch (tests/test_torch_free.py): ``import torch``
alone costs ~2.8 CPU s and ~750 MB of RSS on the 2-core machine. Nothing of
``onnx``/``onnxscript``/the exporter is needed at run time, only ``onnxruntime`` (a core
dependency).

* Which runtime (``SEGTME_RUNTIME``): ``onnx`` = the fp32 graph, ``onnx-int8`` = the int8 graph
  (opt-in: ~1.8x faster forward; held-out PQ / AJI −0.0048 / −0.0035 on the 5 MoNuSeg images,
  −0.002 / −0.003 on all 21), ``torch`` = never, ``auto`` (default) = ``auto_runtime()``: the
  fp32 graph on a CPU **without** native bf16, torch (bf16 autocast, ``precision=auto``) on a CPU
  with it. Measured, whole ``segtme analyze`` processes interleaved (docs/benchmarks.md):
  - CPU without native bf16 (2-core AMD EPYC, AVX2, 2026-12-03, idle): torch's ``auto`` is fp32
    there, and ONNX Runtime fp32 is as cheap per tile and much cheaper to start — 1000² px at
    0.25 µm/px 1.8-2.0 s wall / 2.3-2.5 CPU s / 341 MiB vs torch 4.9-5.3 s / 5.3-5.7 CPU s / 970
    MiB; 4000² px at 0.5 µm/px 32.1-35.4 s / 55.4-60.2 CPU s / 1020 MiB vs 37.2-38.6 s /
    58.4-60.8 CPU s / 1317 MiB (the afternoon AVX2 machine of 2026-12-02: a tile 0.92-0.99x
    torch fp32's CPU). Same nuclei as torch fp32 (tests/test_torch_free.py).
  - CPU with native bf16 (2-core AMD EPYC with AVX512-BF16, 2026-12-02 evening, load 2-6): a
    512² tile costs 0.17 CPU s in ONNX Runtime fp32 against 0.10 in torch bf16, so once tiles
    dominate torch wins (10 000² px at 0.5 µm/px 139.9 vs 107.4 CPU s, peak 1788 vs 1779 MiB),
    while start-up still favours ONNX Runtime (1000² px at 0.25 µm/px 1.15-1.21 vs 2.56-2.69 CPU s,
    327 vs 859 MiB; ``segtme serve`` start -> SERVING 0.76-0.82 vs 1.65-1.76 CPU s). ``auto`` keeps
    torch there (the larger jobs are what costs users time); ``SEGTME_RUNTIME=onnx`` picks the
    torch-free path for small jobs.
  int8 is not the default because its MoNuSeg PQ change is at the issue's 0.005 limit.
  ``SEGTME_COMPILED=0`` also turns ONNX Runtime off (eager torch).
* Eligible (``eligible``): a shipped model (weights from the package's ``models/weights``
  folder, no ``--weights`` / backbone override), device CPU, ``onnxruntime`` importable, the graph
  file present, precision ``auto`` or ``fp32`` (an explicit ``bf16`` keeps the torch path).
  Everything else — trained or random models, other families, CUDA — keeps the torch path
  (``models/compiled.py``'s TorchScript cache, else eager); so does an unmet request, with a
  warning.
* Drift guard: a graph's metadata records its variant, the SHA-256 of the weights file and of
  the architecture part of the config, the tile edge and ``FORMAT``. ``load`` refuses (logs,
  returns None: torch path) a graph whose metadata does not match the files beside it, and
  tests/test_onnx_runtime.py fails on it, so a retrained default cannot ship with a stale graph.
  Regenerate with ``python scripts/export_onnx.py`` (one command; ``--check`` only checks).
* Shapes: the graphs have a dynamic batch and a fixed spatial size, the config's ``tile_size``
  (512² working px; the exporter bakes the pyramid-pooling windows for the traced size, so other
  sizes would be wrong). The engine pads every tile bottom/right (reflect) to a multiple of
  ``pad_multiple`` (16), so every tile of an image of at least ~481² working px — and a 1000² px
  image at 0.25 µm/px, 500² working px — is exactly 512² and runs here. Any other size (an image
  smaller than one tile in either direction, a server's clipped edge tiles) runs on the torch
  module, built on first need (imports torch) — the same maths as the eager model for every
  shape. Padding such a tile up to 512² instead would change the maps: measured on 5 real
  MoNuSeg tiles of 200x500 to 480x300 working px, softmax probabilities differ by up to 0.36-0.61
  (mean 0.002-0.011) and only 94.3-99.0 % of nuclei keep a centroid within 1 px (the pyramid
  pooling averages over the padding), versus ~1e-5 and identical nuclei for the fp32 graph.
* Session: ``intra_op_num_threads`` = ``runtime.compute_threads()`` (torch's thread count when
  torch is loaded, else ``set_torch_threads``'s value / ``$OMP_NUM_THREADS`` / the physical
  cores, torch's default; re-created if it changes), one inter-op thread, sequential execution,
  idle workers do not spin (``SESSION_OPTIONS``; spinning measured 0.60 vs 0.46 CPU s per tile
  under load).

Imports only the standard library and numpy at import time (no torch; ``OrtModule.forward`` and
the torch fallback import it when called); ``onnxruntime`` on first use. A leaf for the
registry, which calls it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import runtime
from ..hashing import file_sha256
from .config import ModelConfig

if TYPE_CHECKING:  # the torch fallback module's type only
    from torch import nn

log = logging.getLogger(__name__)

#: bump when the graph's inputs/outputs or metadata keys change (the export script writes it)
FORMAT = 1
WEIGHTS_DIR = Path(__file__).with_name("weights")
#: ``SEGTME_RUNTIME`` values: auto (the default choice below), onnx (ONNX Runtime fp32; warn
#: when not possible), onnx-int8 (the int8 graph: opt-in), torch (never ONNX Runtime)
RUNTIMES = ("auto", "onnx", "onnx-int8", "torch")
#: graph variants: file suffix beside the weights
VARIANTS = {"fp32": ".onnx", "int8": "_int8.onnx"}
#: session settings, measured on the 2-core machine (docs/benchmarks.md)
SESSION_OPTIONS = {"inter_op_num_threads": 1, "sequential": True, "allow_spinning": False}


def runtime_choice() -> str:
    """``SEGTME_RUNTIME`` (auto | onnx | torch; default auto); ``torch`` when
    ``SEGTME_COMPILED=0`` (no prebuilt or cached graphs at all)."""
    if os.environ.get("SEGTME_COMPILED", "1").strip().lower() in ("0", "false", "no", "off"):
        return "torch"
    v = os.environ.get("SEGTME_RUNTIME", "auto").strip().lower() or "auto"
    if v not in RUNTIMES:
        log.warning("SEGTME_RUNTIME=%r is not one of %s; using auto", v, ", ".join(RUNTIMES))
        return "auto"
    return v


def auto_runtime() -> str:
    """What ``SEGTME_RUNTIME=auto`` runs on the CPU: ``"onnx"`` (the fp32 graph) on a CPU without
    native bf16, ``"torch"`` (bf16 autocast) on one with it (``runtime.cpu_bf16_flags``; no torch
    import). Measured reasons in the module doc."""
    return "torch" if runtime.cpu_bf16_flags() else "onnx"


def available() -> bool:
    """True when ``onnxruntime`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def graph_path(weights: Path, variant: str = "fp32") -> Path:
    """The shipped graph of ``weights``: ``<stem>.onnx`` (fp32) or ``<stem>_int8.onnx`` beside it."""
    w = Path(weights)
    return w.with_name(w.stem + VARIANTS[variant])


def variant_for(choice: str) -> str | None:
    """The graph variant a ``runtime_choice()`` runs (None: torch)."""
    if choice == "auto":
        choice = auto_runtime()
    return {"onnx": "fp32", "onnx-int8": "int8"}.get(choice)


def architecture_sha256(cfg: ModelConfig) -> str:
    """SHA-256 of the config's architecture part (what the graph's structure depends on; the IO
    normalisation and post-processing run outside the graph)."""
    return hashlib.sha256(json.dumps(asdict(cfg.architecture), sort_keys=True, default=str).encode()).hexdigest()


def expected_metadata(cfg: ModelConfig, weights: Path, variant: str = "fp32") -> dict[str, str]:
    """The metadata a current graph of ``cfg`` + ``weights`` carries (the export script writes it)."""
    return {
        "variant": variant,
        "segtme_format": str(FORMAT),
        "model": cfg.name,
        "weights_file": Path(weights).name,
        "weights_sha256": file_sha256(Path(weights)),
        "architecture_sha256": architecture_sha256(cfg),
        "tile": str(int(cfg.tile_size)),
    }


def read_metadata(path: Path) -> dict[str, str]:
    """The graph's custom metadata (ONNX ``metadata_props``), read by ONNX Runtime."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return dict(sess.get_modelmeta().custom_metadata_map)


def _mismatch(meta: dict[str, str], cfg: ModelConfig, weights: Path, variant: str = "fp32") -> str | None:
    want = expected_metadata(cfg, weights, variant)
    bad = [k for k in ("segtme_format", "variant", "weights_sha256", "architecture_sha256", "tile") if meta.get(k) != want[k]]
    if not bad:
        return None
    return "stale graph: " + ", ".join(f"{k} {meta.get(k, '(none)')[:16]} != {want[k][:16]}" for k in bad) + \
        " — regenerate with `python scripts/export_onnx.py`"


def stale_reason(path: Path, cfg: ModelConfig, weights: Path, variant: str = "fp32") -> str | None:
    """None when ``path`` is a current graph (``variant``) of ``cfg`` + ``weights``, else why not."""
    if not Path(path).is_file():
        return f"no graph file {path} — generate it with `python scripts/export_onnx.py`"
    try:
        meta = read_metadata(path)
    except Exception as e:  # not an ONNX file ORT can read
        return f"unreadable graph {path}: {e}"
    return _mismatch(meta, cfg, weights, variant)


def eligible(cfg: ModelConfig, weights: Path | None, device: Any, precision: str) -> str | None:
    """The graph variant ("fp32" | "int8") ``cfg`` + ``weights`` should run in ONNX Runtime, or
    None for the torch path (see the module doc). ``device``: anything with a ``.type`` (a
    ``torch.device`` or ``runtime.DeviceName``); no torch import."""
    choice = runtime_choice()
    variant = variant_for(choice)
    if variant is None or device.type != "cpu" or weights is None or precision not in ("auto", "fp32"):
        return None
    try:
        shipped = weights.is_file() and weights.resolve().parent == WEIGHTS_DIR.resolve()
    except OSError:
        shipped = False
    if not shipped or not graph_path(weights, variant).is_file():
        if shipped and choice != "auto":
            log.warning("SEGTME_RUNTIME=%s but %s is missing; using torch", choice, graph_path(weights, variant).name)
        return None
    if not available():
        if choice != "auto":
            log.warning("SEGTME_RUNTIME=%s but onnxruntime is not installed; using torch", choice)
        return None
    return variant


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = SESSION_OPTIONS["inter_op_num_threads"]
    if SESSION_OPTIONS["sequential"]:
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not SESSION_OPTIONS["allow_spinning"]:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtModule:
    """The inference module of a shipped model run by ONNX Runtime: the engine's numpy backend
    (``inference.engine``), without torch.

    ``run(x)``: x (B, 3, H, W) float32 normalised RGB (numpy, any strides) -> ``{"sem": (B, C, H,
    W), "hv": (B, 2, H, W)}`` float32 numpy (the graph's outputs, in the model contract's order).
    (H, W) = the graph's tile (``self.tile``) runs in ONNX Runtime; another size runs on
    ``torch_module()`` (built on first need by ``torch_loader``: the folded torch module of the
    same weights; imports torch) — the graph's pyramid pooling is baked for its tile, and padding a
    smaller input up to it would change the maps (see the module doc). Always fp32.
    Called with a torch tensor (``module(x)``, callers that drive the module themselves) it
    answers with torch tensors, as the torch module would. ``segtme_prepared``: nothing left for
    ``inference.engine._prepare`` to fold."""

    segtme_prepared = True
    segtme_runtime = "onnxruntime"

    def __init__(self, path: Path, session, threads: int, tile: int, outputs: tuple[str, ...],
                 torch_loader: Callable[[], "nn.Module"], metadata: dict[str, str]) -> None:
        self.path = Path(path)
        self.session = session
        self.threads = int(threads)
        self.tile = int(tile)
        self.outputs = tuple(outputs)
        self.metadata = dict(metadata)
        self._torch_loader = torch_loader
        self._torch: "nn.Module | None" = None
        self.ort_batches = 0  # batches served by ONNX Runtime / by the torch module (tests, logs)
        self.torch_batches = 0

    def eval(self) -> "OrtModule":
        """Nothing to switch (inference only); returns self, as ``nn.Module.eval`` does."""
        return self

    def torch_module(self) -> "nn.Module":
        """The folded torch module of the same model (built once, on first call; imports torch)."""
        if self._torch is None:
            log.info("%s: building the torch module (an input that is not %d² px, or bf16)", self.path.name, self.tile)
            self._torch = self._torch_loader()
        return self._torch

    def takes(self, shape: tuple[int, ...]) -> bool:
        """True when a (B, 3, H, W) input of ``shape`` runs in ONNX Runtime (H = W = the tile)."""
        return tuple(shape[2:]) == (self.tile, self.tile)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """ONNX Runtime on a (B, 3, tile, tile) float32 numpy batch (see the class doc)."""
        n = runtime.compute_threads()
        if n != self.threads:  # runtime.set_torch_threads / torch.set_num_threads after load: follow it
            self.session, self.threads = _session(self.path, n), n
        ys = self.session.run(list(self.outputs), {"x": np.ascontiguousarray(x, dtype=np.float32)})
        self.ort_batches += 1
        return dict(zip(self.outputs, ys))

    def __call__(self, x):
        """A torch tensor in, torch tensors out (``forward``); numpy in: ``run`` (tile-sized only)."""
        if isinstance(x, np.ndarray):
            return self.run(x)
        return self.forward(x)

    def forward(self, x):
        """Torch in, torch out: x (B, 3, H, W) tensor; the tile size on CPU in ONNX Runtime, other
        inputs on ``torch_module()``."""
        import torch

        if not self.takes(tuple(x.shape)) or x.device.type != "cpu":
            self.torch_batches += 1
            return self.torch_module()(x)
        ys = self.run(x.detach().float().numpy())
        return {k: torch.from_numpy(y) for k, y in ys.items()}


def load(cfg: ModelConfig, weights: Path, outputs: tuple[str, ...], torch_loader: Callable[[], "nn.Module"],
         variant: str = "fp32") -> OrtModule | None:
    """The ONNX Runtime module of a shipped model's graph ``variant``, or None (graph stale,
    unreadable, or not of this model's outputs: the caller keeps the torch path; the reason is
    logged)."""
    path = graph_path(weights, variant)
    try:
        threads = runtime.compute_threads()
        sess = _session(path, threads)
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        problem = _mismatch(meta, cfg, weights, variant)
        names = tuple(o.name for o in sess.get_outputs())
        shape = list(sess.get_inputs()[0].shape)
        if problem is None and set(names) != set(outputs):
            problem = f"graph outputs {names} != the model's {outputs}"
        if problem is None and shape[1:] != [3, int(cfg.tile_size), int(cfg.tile_size)]:
            problem = f"graph input {shape} is not (batch, 3, {cfg.tile_size}, {cfg.tile_size})"
    except Exception as e:  # a broken file, an onnxruntime that cannot load it
        problem = f"cannot load {path}: {e}"
    if problem is not None:
        log.warning("ONNX Runtime not used for %s (%s); using the torch model", cfg.name, problem)
        return None
    log.debug("ONNX Runtime module loaded from %s", path)
    return OrtModule(path, sess, threads, int(cfg.tile_size), tuple(outputs), torch_loader, meta)
