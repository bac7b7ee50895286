"""Inference engine: batched forward passes and blended predictions over one tile grid.

Units: *input px* are pixels of the image the caller gave (µm/px = ``mpp_in``); *working px* are
pixels at the model's working resolution ``cfg.mpp``. ``s = mpp_in / cfg.mpp`` is working px per
input px. Resampling between them (size rule, filter, pixel-centre convention) is
``segtme.resample``; the engine only ever sees working-resolution pixels.

The engine never knows class names: it returns the model's channels; names, colours and roles
come from ``cfg.tax`` downstream.

One engine path over numpy arrays: tiles are padded, normalised, flipped (TTA), softmaxed and
blended here in numpy, and only the forward pass is a *backend* — a callable ``(B, 3, H, W)
float32 normalised RGB -> {"sem": (B, C, H, W), "hv": (B, 2, H, W)}`` float32 numpy
(``Backend``): the model's torch module (``TorchBackend``: any device, bf16 autocast, trained /
random models) or, for the shipped model on the CPU, its ONNX Runtime session
(``models.onnx_runtime.OrtModule``), which runs without importing torch. This module imports
torch only when a torch backend is built.
"""

from __future__ import annotations

from ..runtime import keep_large_buffers  # noqa: I001  (first: sets OpenMP waiting before torch loads)

import contextlib
import logging
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..models.config import ModelConfig
from ..models.registry import LoadedModel
from .. import resample as _rs
from .maps import Maps
from .tiling import blend_window, coarse_axis, coarse_take, tile_grid

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: a forward pass: (B, 3, H, W) float32 normalised RGB (numpy, any strides) -> float32 numpy
#: outputs ``{"sem": (B, C, H, W) logits, "hv": (B, 2, H, W)}`` ("hv" only for HV models; any
#: further key: the logits of another class head, e.g. "nuc", softmaxed like "sem": ``AUX``)
Backend = Callable[[np.ndarray], dict[str, np.ndarray]]


def aux_outputs(keys) -> list[str]:
    """The further class heads among a model's output keys: every key but "sem" and "hv", in
    order (each is softmaxed, flipped back and blended like "sem" and returned by name)."""
    return [k for k in keys if k not in ("sem", "hv")]

#: progress callback: called with the number of tiles just finished
Progress = Callable[[int], None]

__all__ = ["Maps", "Backend", "GridPredictor", "TorchBackend", "model_backend", "forward_tiles", "predict_maps", "scale_factor",
           "to_working", "work_to_input", "input_to_work"]


# --------------------------------------------------------------------------- MPP (segtme.resample)


def scale_factor(mpp_in: float, cfg: ModelConfig) -> float:
    """s = mpp_in / cfg.mpp (working px per input px; exactly 1.0 within 1e-6), after validating
    ``mpp_in`` (InputError naming the supported range)."""
    from ..io.image import validate_mpp

    return _rs.scale(validate_mpp(mpp_in, "input MPP"), float(cfg.mpp))


def to_working(rgb: np.ndarray, mpp_in: float, cfg: ModelConfig) -> tuple[np.ndarray, float]:
    """The whole image resampled to the model's ``cfg.mpp`` (``segtme.resample.to_working``),
    after validating ``mpp_in``: ``(rgb_work, s)``."""
    scale_factor(mpp_in, cfg)
    return _rs.to_working(rgb, float(mpp_in), float(cfg.mpp))


def work_to_input(xy: np.ndarray, s: float, offset_xy: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """Map (…, 2) working-px (x, y) to input px: ``xy / s + offset`` (corner coordinates)."""
    return np.asarray(xy, dtype=np.float64) / s + np.asarray(offset_xy, dtype=np.float64)


def input_to_work(xy: np.ndarray, s: float, offset_xy: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """Inverse of ``work_to_input``."""
    return (np.asarray(xy, dtype=np.float64) - np.asarray(offset_xy, dtype=np.float64)) * s


# --------------------------------------------------------------------------- forward


def _prepare(model: LoadedModel) -> torch.nn.Module:
    """The module to run for inference: an eval-mode, channels_last copy of ``model.module`` with
    BatchNorm folded into the preceding convolutions (``registry.fold_batchnorm``: exact maths,
    checked numerically; the copy shares the unfolded weights' tensors, so it costs no memory).

    Cached on the module and rebuilt when any parameter or buffer was modified since (tensor
    version counters), so a model still being trained is never run with stale folded weights.
    ``model.module`` is put in eval mode and channels_last (as before) but otherwise unchanged.
    An ONNX Runtime module (``models/onnx_runtime.py``) is returned as it is (no torch import),
    or its torch module for an explicit bf16.
    """
    m = model.module
    m.eval()
    if getattr(m, "segtme_runtime", None) == "onnxruntime" and getattr(model, "precision", "auto") == "bf16":
        return m.torch_module()  # models/onnx_runtime.py runs fp32 only: an explicit bf16 runs the torch module
    if getattr(m, "segtme_prepared", False):  # models/compiled.py, models/onnx_runtime.py: folded already
        return m
    import torch

    from ..models.registry import fold_batchnorm
    tensors = list(m.parameters()) + list(m.buffers())
    key = (len(tensors), sum(int(t._version) for t in tensors), tuple(id(t) for t in tensors[:4]))
    cached = getattr(m, "_segtme_infer", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    m.__dict__.pop("_segtme_infer", None)  # never copy a stale cache into the new one
    m.to(memory_format=torch.channels_last)
    tensors = list(m.parameters()) + list(m.buffers())
    key = (len(tensors), sum(int(t._version) for t in tensors), tuple(id(t) for t in tensors[:4]))
    folded, n = fold_batchnorm(m)
    folded = folded.to(memory_format=torch.channels_last)
    log.debug("inference module: %d conv+BN pairs folded", n)
    object.__setattr__(m, "_segtme_infer", (key, folded))  # plain attribute, not a submodule
    return folded


def _autocast(model: LoadedModel):
    """bf16 autocast when the model's precision resolves to bf16 (``runtime.resolve_precision``:
    by default on CUDA and on CPUs with native bf16), else full precision."""
    import torch

    from ..runtime import resolve_precision

    dev = model.device
    if resolve_precision(getattr(model, "precision", "auto"), dev) == "bf16" and dev.type in ("cuda", "cpu"):
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: test-time augmentations ``forward_tiles`` knows
TTA_MODES = ("none", "flip")


def resolve_tta(model: LoadedModel, tta: str | None = None) -> str:
    """``tta`` if given, else the model config's ``extra["tta"]``, else "none" (InputError for
    an unknown mode)."""
    mode = tta if tta is not None else str(model.config.extra.get("tta", "none"))
    if mode not in TTA_MODES:
        raise InputError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


class TorchBackend:
    """A torch module as the engine's ``Backend``: numpy in, numpy out, on ``model.device``, under
    ``torch.inference_mode``, channels_last, with bf16 autocast when ``model.precision`` resolves
    to bf16 (``_autocast``); outputs returned as float32 on the host. ``module``: the module to
    run (default ``_prepare(model)``: the BatchNorm-folded inference copy)."""

    def __init__(self, model: LoadedModel, module: "torch.nn.Module | None" = None) -> None:
        import torch

        from ..runtime import sync_torch_threads

        sync_torch_threads()
        self.torch = torch
        self.model = model
        self.module = _prepare(model) if module is None else module

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.model.device).contiguous(memory_format=torch.channels_last)
            with _autocast(self.model):
                y = self.module(t)
            return {k: v.float().cpu().numpy() for k, v in y.items()}


def model_backend(model: LoadedModel) -> Backend:
    """The forward pass of ``model``: its ONNX Runtime session (``models/onnx_runtime.py``;
    inputs of another size than its graph's tile on its torch module) or ``TorchBackend``."""
    m = model.module
    if getattr(m, "segtme_runtime", None) != "onnxruntime" or getattr(model, "precision", "auto") == "bf16":
        return TorchBackend(model)
    torch_run: list[TorchBackend] = []

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        if m.takes(x.shape):
            return m.run(x)
        m.torch_batches += 1  # the graph's pyramid pooling is baked for its tile: the torch module
        if not torch_run:
            torch_run.append(TorchBackend(model, m.torch_module()))
        return torch_run[0](x)

    return run


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of (B, C, H, W) logits, float32 (in place when the array is ours)."""
    z = np.asarray(logits, dtype=np.float32)
    if not z.flags.writeable:
        z = z.copy()
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


#: torch-style flip dims of a (B, C, H, W) batch -> axes of the (B, H, W, C) input batch
_NHWC_AXIS = {2: 1, 3: 2}


def _run(backend: Backend, x: np.ndarray, tta: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """(softmax prob, hv, aux), (B, C, H, W) / (B, 2, H, W) / {name: (B, C_k, H, W)} float32, of
    one normalised batch ``x`` (B, H, W, 3) float32 (aux: the softmax of each further class head,
    ``aux_outputs``); ``tta="flip"``: the mean over the identity and the horizontal, vertical
    and both flips, each mapped back (HV's x channel changes sign under a horizontal flip, its y
    channel under a vertical one). The backend sees ``x`` as (B, 3, H, W) (channels-last memory)."""
    flips: tuple[tuple[int, ...], ...] = ((),) if tta == "none" else ((), (3,), (2,), (2, 3))
    prob = hv = None
    aux: dict[str, np.ndarray] = {}
    for dims in flips:
        xi = np.ascontiguousarray(np.flip(x, tuple(_NHWC_AXIS[d] for d in dims))) if dims else x
        y = backend(xi.transpose(0, 3, 1, 2))
        p = _softmax(y["sem"])
        p = np.flip(p, dims) if dims else p
        prob = p if prob is None else prob + p
        for k in aux_outputs(y):
            a = _softmax(y[k])
            a = np.flip(a, dims) if dims else a
            aux[k] = a if k not in aux else aux[k] + a
        if "hv" in y:
            h = np.asarray(y["hv"], dtype=np.float32)
            if dims:
                sign = np.array([-1.0 if 3 in dims else 1.0, -1.0 if 2 in dims else 1.0], np.float32)
                h = np.flip(h, dims) * sign.reshape(1, 2, 1, 1)
            hv = h if hv is None else hv + h
    if len(flips) > 1:
        n = np.float32(len(flips))
        prob = prob / n
        hv = hv / n if hv is not None else None
        aux = {k: a / n for k, a in aux.items()}
    return prob, hv, aux


def forward_tiles(
    model: LoadedModel, tiles: Sequence[np.ndarray], batch_size: int | None = None, tta: str | None = None
) -> list[dict[str, np.ndarray]]:
    """Run the model on working-resolution tiles.

    tiles: (h, w, 3) uint8 arrays at ``cfg.mpp`` (any sizes; equal sizes are batched together,
    ``batch_size`` at a time, all at once if None). Each is padded to ``cfg.pad_multiple``
    (bottom/right, ``resample.pad_to_multiple``: reflect) and normalised with ``cfg.mean/std``;
    outputs are cropped back.
    Returns per tile ``{"prob": (C, h, w) float32 softmax, "hv": (2, h, w) float32}`` (``"hv"``
    absent for models without an HV head; "prob" is ``(C, ceil(h/k), ceil(w/k))`` for a model
    whose ``io.sem_stride`` is k > 1) plus, under its own name, the softmax of each further
    class head (``aux_outputs``, e.g. ``"nuc"``). The forward pass is the model's backend
    (``model_backend``: ONNX Runtime for the shipped model on the CPU, else ``TorchBackend``:
    ``torch.inference_mode``, channels_last, bf16 autocast when ``model.precision`` resolves to
    bf16 — CUDA; CPUs with native bf16); everything else runs here, in numpy.
    tta: test-time augmentation (``resolve_tta``: "none" or "flip", 4 forward passes).
    """
    mode = resolve_tta(model, tta)
    keep_large_buffers()  # reuse large activation buffers (runtime._tune_glibc_malloc)
    io = model.config.io
    backend = model_backend(model)
    mean = np.asarray(io.mean, dtype=np.float32)
    std = np.asarray(io.std, dtype=np.float32)
    out: list[dict[str, np.ndarray] | None] = [None] * len(tiles)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, t in enumerate(tiles):
        if t.ndim != 3 or t.shape[2] != 3 or t.dtype != np.uint8 or t.shape[0] == 0 or t.shape[1] == 0:
            raise InputError(f"tile {k}: expected a non-empty (h, w, 3) uint8 array, got {t.shape} {t.dtype}")
        groups.setdefault(t.shape[:2], []).append(k)
    for idxs in groups.values():
        step = batch_size or len(idxs)
        for b0 in range(0, len(idxs), step):
            batch = idxs[b0 : b0 + step]
            x = np.stack([tiles[i] for i in batch])
            h, w = x.shape[1:3]
            x = _rs.pad_to_multiple(x, io.pad_multiple, axes=(1, 2))
            t = x.astype(np.float32)
            t /= np.float32(255.0)
            t -= mean
            t /= std
            p, v, a = _run(backend, t, mode)
            st = int(io.sem_stride)
            if p.shape[2] * st != t.shape[1] or p.shape[3] * st != t.shape[2]:
                raise ValueError(f"model returned 'sem' of {p.shape[2:]} for a {t.shape[1:3]} px tile; "
                                 f"its config says sem_stride {st}")
            prob = p[:, :, :-(-h // st), :-(-w // st)]
            hv = v[:, :, :h, :w] if v is not None else None
            for k, i in enumerate(batch):
                d = {"prob": np.ascontiguousarray(prob[k])}
                if hv is not None:
                    d["hv"] = np.ascontiguousarray(hv[k])
                for name, arr in a.items():
                    d[name] = np.ascontiguousarray(arr[k, :, :h, :w])
                out[i] = d
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- tiled prediction

Region = tuple[int, int, int, int]  # (x0, y0, x1, y1) working px, half-open


class GridPredictor:
    """Blended tile predictions over **one** tile grid of a whole working-resolution image,
    served region by region (``predict``), with every tile run exactly once.

    The grid is ``tile_grid(height, width, tile, overlap)`` of the whole working image. The maps
    of a region are the blend of *all* grid tiles that touch it (each tile's window weights, as in
    ``predict_maps``), so they equal the whole image's blended maps cropped to the region: regions
    (``pipeline.segment_image``'s chunks with their halos) add no tile-edge effects and no
    recomputation where they overlap. A tile still needed by a later planned region is kept
    (float16, the only difference from the whole-image maps: ~1e-3 relative) until its last user
    is served; ``regions`` (all regions the caller will ask for, in order) lets it count users.

    fetch_rgb(region) -> (h, w, 3) uint8: the working-px pixels of a region (e.g.
    ``resample.resample_region(rgb, s, region)``); called once per ``predict`` for the bounding box of the
    tiles that still have to run. progress: called with the number of tiles just run.
    Memory: the region's maps ((C + 3) x h x w float32) + cached tiles ((C + 2) x tile² float16
    each; about one row of chunks' worth of border tiles).
    """

    def __init__(
        self,
        model: LoadedModel,
        height: int,
        width: int,
        fetch_rgb: Callable[[Region], np.ndarray],
        regions: Sequence[Region] = (),
        tile: int | None = None,
        overlap: int | None = None,
        batch_size: int = 8,
        progress: Progress | None = None,
        tta: str | None = None,
    ) -> None:
        io = model.config.io
        self.tta = resolve_tta(model, tta)
        self.model = model
        self.tile = int(tile or io.tile_size)
        self.overlap = int(io.tile_overlap if overlap is None else overlap)
        if self.tile <= 0 or not 0 <= self.overlap < self.tile:
            raise InputError(f"need tile > 0 and 0 <= overlap < tile, got tile={self.tile}, overlap={self.overlap}")
        self.H, self.W = int(height), int(width)
        self.grid = tile_grid(self.H, self.W, self.tile, self.overlap)
        self.win = blend_window(min(self.tile, self.H), min(self.tile, self.W), self.overlap)
        self.sem_stride = int(io.sem_stride)
        self.fetch_rgb = fetch_rgb
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.tiles_run = 0
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._users = np.zeros(len(self.grid), np.int64)
        for r in regions:
            self._users[self.tiles_for(r)] += 1

    def tiles_for(self, region: Region) -> list[int]:
        """Indices of the grid tiles that overlap ``region`` (working px)."""
        x0, y0, x1, y1 = region
        return [k for k, (ty, tx, th, tw) in enumerate(self.grid) if tx < x1 and tx + tw > x0 and ty < y1 and ty + th > y0]

    def predict(self, region: Region) -> Maps:
        """Blended maps of ``region`` = (x0, y0, x1, y1) working px, clipped to the image."""
        x0, y0, x1, y1 = (int(v) for v in region)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(self.W, x1), min(self.H, y1)
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"empty prediction region {region} for a {self.W}x{self.H} px working image")
        C = self.model.config.num_classes
        st = self.sem_stride
        if st > 1 and (x0 % st or y0 % st):
            raise InputError(f"prediction region {region} must start on the model's {st} px class-map grid")
        h, w = y1 - y0, x1 - x0
        idx = self.tiles_for((x0, y0, x1, y1))
        todo = [k for k in idx if k not in self._cache]
        fresh: dict[int, dict[str, np.ndarray]] = {}
        if todo:
            bx0 = min(self.grid[k][1] for k in todo)
            by0 = min(self.grid[k][0] for k in todo)
            bx1 = max(self.grid[k][1] + self.grid[k][3] for k in todo)
            by1 = max(self.grid[k][0] + self.grid[k][2] for k in todo)
            rgb = self.fetch_rgb((bx0, by0, bx1, by1))
            if rgb.shape[:2] != (by1 - by0, bx1 - bx0):
                raise ValueError(f"fetch_rgb returned {rgb.shape[:2]}, expected {(by1 - by0, bx1 - bx0)}")
            for b0 in range(0, len(todo), self.batch_size):
                ks = todo[b0 : b0 + self.batch_size]
                crops = [rgb[ty - by0 : ty - by0 + th, tx - bx0 : tx - bx0 + tw] for (ty, tx, th, tw) in (self.grid[k] for k in ks)]
                for k, o in zip(ks, forward_tiles(self.model, crops, self.batch_size, self.tta)):
                    if o["prob"].shape[0] != C:
                        raise ValueError(f"model returned {o['prob'].shape[0]} classes, config says {C}")
                    fresh[k] = o
                self.tiles_run += len(ks)
                if self.progress is not None:
                    self.progress(len(ks))
            del rgb
        prob = np.zeros((C, -(-h // st), -(-w // st)), np.float32)
        psum = np.zeros(prob.shape[1:], np.float32) if st > 1 else None
        hv: np.ndarray | None = None
        aux: dict[str, np.ndarray] = {}
        wsum = np.zeros((h, w), np.float32)
        for k in idx:
            o = fresh.get(k) or self._cache[k]
            ty, tx, th, tw = self.grid[k]
            sy0, sy1 = max(ty, y0), min(ty + th, y1)
            sx0, sx1 = max(tx, x0), min(tx + tw, x1)
            src = (slice(sy0 - ty, sy1 - ty), slice(sx0 - tx, sx1 - tx))
            dst = (slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))
            wt = self.win[src]
            if psum is None:
                prob[(slice(None),) + dst] += o["prob"][(slice(None),) + src] * wt
            else:  # the class map on its own grid (io.sem_stride): window sampled at the block centres
                ay, ax = coarse_axis(ty, th, y0, h, st), coarse_axis(tx, tw, x0, w, st)
                if ay is not None and ax is not None:
                    cw = self.win[np.ix_(ay.px, ax.px)]
                    prob[:, ay.dst, ax.dst] += coarse_take(o["prob"], ay, ax) * cw
                    psum[ay.dst, ax.dst] += cw
            if "hv" in o:
                if hv is None:
                    hv = np.zeros((2, h, w), np.float32)
                hv[(slice(None),) + dst] += o["hv"][(slice(None),) + src] * wt
            for name in aux_outputs(n for n in o if n != "prob"):
                if name not in aux:
                    aux[name] = np.zeros((o[name].shape[0], h, w), np.float32)
                aux[name][(slice(None),) + dst] += o[name][(slice(None),) + src] * wt
            wsum[dst] += wt
        for k in idx:
            self._users[k] -= 1
            if self._users[k] > 0:
                if k in fresh:  # still needed by a later region: keep a float16 copy
                    self._cache[k] = {n: a.astype(np.float16) for n, a in fresh[k].items()}
            else:
                self._cache.pop(k, None)
        inv = 1.0 / wsum
        prob *= inv if psum is None else 1.0 / psum
        if hv is not None:
            hv *= inv
        for a in aux.values():
            a *= inv
        return Maps(prob=prob, hv=hv, aux=aux, sem_stride=st)




def predict_maps(
    model: LoadedModel,
    rgb_work: np.ndarray,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    *,
    stitch: str = "blend",
    progress: Progress | None = None,
    tta: str | None = None,
) -> Maps:
    """Tiled prediction over a working-resolution image, stitched into full maps.

    rgb_work: (H, W, 3) uint8 at ``cfg.mpp``. tile / overlap: working px (default: the config's).
    stitch: ``"blend"`` (default): every tile's probabilities and HV maps are weighted by the same
    smooth window (``tiling.blend_window``, sin² ramp over the overlap) and normalised by the summed
    weights, so there are no seams; ``"last_writer"``: each tile overwrites the previous ones (the
    SegTME-UNI2 paper's HV stitching; kept for comparison, it leaves seams; "sem" and "hv" only).
    progress: called with the number of tiles finished after each batch. tta: ``resolve_tta``.
    Memory: (C + 3) x H x W float32 — callers bound H, W (``pipeline.segment_image`` chunks).
    """
    cfg = model.config
    tile = int(tile or cfg.tile_size)
    overlap = int(cfg.tile_overlap if overlap is None else overlap)
    if tile <= 0 or not 0 <= overlap < tile:
        raise InputError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if stitch not in ("blend", "last_writer"):
        raise ValueError(f"stitch must be 'blend' or 'last_writer', got {stitch!r}")
    if stitch == "last_writer" and int(cfg.io.sem_stride) != 1:
        raise ValueError("stitch='last_writer' needs a class map at every working px (sem_stride 1)")
    H, W = rgb_work.shape[:2]
    bs = max(1, int(batch_size))
    if stitch == "blend":
        whole = (0, 0, W, H)
        gp = GridPredictor(model, H, W, lambda r: rgb_work[r[1] : r[3], r[0] : r[2]], [whole], tile, overlap, bs, progress,
                           tta)
        return gp.predict(whole)
    grid = tile_grid(H, W, tile, overlap)
    C = cfg.num_classes
    prob = np.zeros((C, H, W), np.float32)
    hv: np.ndarray | None = None
    for b0 in range(0, len(grid), bs):
        boxes = grid[b0 : b0 + bs]
        outs = forward_tiles(model, [rgb_work[y : y + h, x : x + w] for (y, x, h, w) in boxes], bs, tta)
        for (y, x, h, w), o in zip(boxes, outs):
            if o["prob"].shape[0] != C:
                raise ValueError(f"model returned {o['prob'].shape[0]} classes, config says {C}")
            if hv is None and "hv" in o:
                hv = np.zeros((2, H, W), np.float32)
            prob[:, y : y + h, x : x + w] = o["prob"]
            if hv is not None:
                hv[:, y : y + h, x : x + w] = o["hv"]
        if progress is not None:
            progress(len(boxes))
    return Maps(prob=prob, hv=hv)
