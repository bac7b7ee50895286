"""Entropy-filtered pseudo-labels (paper section 5.2.1): ``segtme pseudo-label``.

For every patch the model predicts class probabilities at its working MPP; per pixel the
entropy ``H(p) = -Σ_c p_c log p_c`` (natural log, paper eq. 7); per patch ``H̄`` = mean entropy
over *foreground* pixels (arg-max ≠ background). Patches with ``H̄ < τ``, τ = the
``tau_percentile`` (70) percentile of H̄ over the whole corpus, are accepted and their arg-max
class maps are saved as single-channel uint8 ``<patch>_sem_map.png`` (at the patch's own
resolution, so they sit pixel-aligned beside the image). Patches without any predicted
foreground have no H̄ and are rejected (they would teach only background).

Two passes, resumable and shardable (``--shard i/n``; under torchrun each rank is a shard):

1. ``stats``: shard i handles patches ``i, i+n, i+2n, …`` (sorted by name) in chunks of
   ``chunk`` patches; each chunk writes its candidate maps under ``candidates/`` and one stats file
   ``stats/s{i}of{n}-c{k}.json`` (skipped when present: resume); ``stats/done-s{i}of{n}.json``
   marks the shard complete.
2. ``write``: waits until every shard's pass 1 is done, computes τ over all stats, moves each
   accepted candidate of this shard to ``<out>/<patch>_sem_map.png`` (atomic rename) and writes
   ``manifest-s{i}of{n}.json``; when all shard manifests exist, ``manifest.json`` is merged
   (accepted patches with image path, MPP and H̄; τ; the entropy distribution), which
   ``segtme.data.readers.read_pseudo`` reads. Finished candidates are removed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.readers import read_folder, read_images, read_tcga_ut
from ..data.sample import SampleRef
from ..errors import InputError
from ..export.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- science (pure)
def pixel_entropy(prob: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Per-pixel entropy (nats) of class probabilities (C, H, W) or (B, C, H, W) along the class axis."""
    axis = -3
    if isinstance(prob, torch.Tensor):
        return -(prob * torch.log(prob.clamp_min(1e-12))).sum(axis)
    return -(prob * np.log(np.clip(prob, 1e-12, None))).sum(axis)


def patch_fg_entropy(prob: np.ndarray) -> tuple[float, int, float]:
    """(mean entropy over foreground pixels (NaN if none), foreground pixel count, mean entropy
    over all pixels) of one patch's probabilities (C, H, W); foreground = arg-max ≠ 0."""
    h = pixel_entropy(prob)
    fg = prob.argmax(0) != 0
    n = int(fg.sum())
    return (float(h[fg].mean()) if n else math.nan), n, float(h.mean())


def entropy_threshold(values: Sequence[float], percentile: float = 70.0) -> float:
    """τ = the ``percentile`` of the finite H̄ values (NaN-free)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        raise InputError("no patch with predicted foreground: cannot set the entropy threshold")
    return float(np.percentile(v, percentile))


def accept(values: Sequence[float], tau: float) -> np.ndarray:
    """Boolean mask: H̄ < τ (NaN rejected)."""
    v = np.asarray([x if x is not None else math.nan for x in values], np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(v) & (v < tau)


# --------------------------------------------------------------------------- config / shards
@dataclass
class PseudoLabelConfig:
    model: str
    data: str
    out: str
    kind: str = "auto"  # auto | tcga_ut | images | folder
    mpp: float | None = None
    scales: list[int] | None = None
    tau_percentile: float = 70.0
    batch_size: int = 16
    device: str = "auto"
    chunk: int = 256
    wait_s: float = 10800.0


def parse_shard(s: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n); None -> torchrun's (RANK, WORLD_SIZE) or (0, 1)."""
    if s is None:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        i, n = (int(x) for x in s.split("/"))
    except ValueError:
        raise InputError(f"--shard expects I/N, got {s!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {s}: need 0 <= I < N")
    return i, n


def list_patches(cfg: PseudoLabelConfig) -> list[SampleRef]:
    root = Path(cfg.data)
    kind = cfg.kind
    if kind == "auto":
        kind = "tcga_ut" if cfg.mpp is None else "images"
    if kind == "tcga_ut":
        refs = read_tcga_ut(root, scales=cfg.scales, name="")
    elif kind == "images":
        if cfg.mpp is None:
            raise InputError("pseudo-label: --mpp is required for a plain image folder")
        refs = read_images(root, mpp=cfg.mpp, name="")
    elif kind == "folder":
        refs = read_folder(root, mpp=cfg.mpp, name="")
    else:
        raise InputError(f"pseudo-label: unknown kind {kind!r}")
    for r in refs:
        r.name = r.name.lstrip("/")
    refs.sort(key=lambda r: r.name)
    if not refs:
        raise InputError(f"pseudo-label: no images under {root}")
    return refs


def _image_path(ref: SampleRef) -> str:
    p = ref.meta.get("path") or getattr(ref.load, "image", None) or getattr(ref.load, "p", None)
    return str(Path(p).resolve()) if p else ref.name


# --------------------------------------------------------------------------- model
@torch.no_grad()
def predict_probs(loaded, rgbs: list[np.ndarray], mpps: list[float]) -> list[np.ndarray]:
    """Softmax probabilities (C, h, w) at working MPP for each image (whole patch, padded to
    ``pad_multiple``; meant for patch corpora such as TCGA-UT's 256 px patches)."""
    cfg = loaded.config
    dev = loaded.device
    mean = torch.tensor(cfg.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=dev).view(1, 3, 1, 1)
    xs, sizes = [], []
    for rgb, mpp in zip(rgbs, mpps):
        s = mpp / cfg.mpp
        h, w = rgb.shape[:2]
        ww, wh = max(1, round(w * s)), max(1, round(h * s))
        im = Image.fromarray(rgb)
        if (ww, wh) != (w, h):
            im = im.resize((ww, wh), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255.0)
        sizes.append((wh, ww))
        xs.append(x)
    m = cfg.pad_multiple
    H = max(((s[0] + m - 1) // m) * m for s in sizes)
    W = max(((s[1] + m - 1) // m) * m for s in sizes)
    batch = torch.zeros(len(xs), 3, H, W)
    for i, x in enumerate(xs):
        batch[i, :, : x.shape[1], : x.shape[2]] = x
    batch = batch.to(dev)
    batch = (batch - mean) / std
    # padded area is zero *before* normalisation (the paper pads with zeros)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    with ctx:
        out = loaded.module(batch)
    prob = torch.softmax(out["sem"].float(), 1).cpu().numpy()
    return [prob[i, :, : s[0], : s[1]] for i, s in enumerate(sizes)]


def sem_map_at_input(prob: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Arg-max class map (uint8) at the input size: probabilities are resampled bilinearly first."""
    if prob.shape[1:] != tuple(size_hw):
        t = torch.from_numpy(prob)[None]
        prob = F.interpolate(t, size=size_hw, mode="bilinear", align_corners=False)[0].numpy()
    return prob.argmax(0).astype(np.uint8)


def _save_png(a: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")


# --------------------------------------------------------------------------- passes
def pass_stats(cfg: PseudoLabelConfig, refs: list[SampleRef], shard: tuple[int, int], loaded=None) -> Path:
    """Pass 1 for one shard (resumable by chunk). Returns the shard's done-marker path."""
    i, n = shard
    out = Path(cfg.out)
    (out / "stats").mkdir(parents=True, exist_ok=True)
    done = out / "stats" / f"done-s{i}of{n}.json"
    if done.is_file():
        return done
    mine = refs[i::n]
    chunks = [mine[k: k + cfg.chunk] for k in range(0, len(mine), cfg.chunk)]
    for k, chunk in enumerate(chunks):
        sp = out / "stats" / f"s{i}of{n}-c{k:06d}.json"
        if sp.is_file():
            continue
        if loaded is None:
            from ..models.registry import load_model

            loaded = load_model(cfg.model, device=cfg.device)
        rows = []
        for b in range(0, len(chunk), cfg.batch_size):
            part = chunk[b: b + cfg.batch_size]
            rgbs = [r.load()[0] for r in part]
            probs = predict_probs(loaded, rgbs, [r.mpp for r in part])
            for r, rgb, prob in zip(part, rgbs, probs):
                hfg, nfg, hall = patch_fg_entropy(prob)
                _save_png(sem_map_at_input(prob, rgb.shape[:2]), out / "candidates" / f"{r.name}_sem_map.png")
                rows.append({"name": r.name, "image": _image_path(r), "mpp": r.mpp, "mean_fg_entropy": hfg,
                             "n_fg_px": nfg, "mean_entropy": hall, **{k2: v for k2, v in r.meta.items() if k2 != "path"}})
        atomic_write_text(sp, json.dumps(rows))
        log.info("pseudo-label stats shard %d/%d chunk %d/%d", i, n, k + 1, len(chunks))
    atomic_write_text(done, json.dumps({"shard": i, "of": n, "patches": len(mine), "chunks": len(chunks),
                                        "model": cfg.model}))
    return done


def _all_stats(out: Path, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in sorted((out / "stats").glob(f"s*of{n}-c*.json")):
        rows += json.loads(p.read_text())
    return rows


def _wait_for(paths: list[Path], wait_s: float, what: str) -> None:
    t0 = time.time()
    while not all(p.is_file() for p in paths):
        if time.time() - t0 > wait_s:
            missing = [str(p) for p in paths if not p.is_file()]
            raise InputError(f"pseudo-label: {what} missing after {wait_s:.0f} s: {missing[:4]}")
        time.sleep(2.0)


def pass_write(cfg: PseudoLabelConfig, shard: tuple[int, int], wait: bool = True) -> dict[str, Any]:
    """Pass 2 for one shard; merges ``manifest.json`` once every shard is done."""
    i, n = shard
    out = Path(cfg.out)
    dones = [out / "stats" / f"done-s{j}of{n}.json" for j in range(n)]
    if wait:
        _wait_for(dones, cfg.wait_s, "pass-1 shards")
    elif not all(p.is_file() for p in dones):
        raise InputError("pseudo-label pass 2: not every shard has finished pass 1")
    rows = _all_stats(out, n)
    tau = entropy_threshold([r["mean_fg_entropy"] for r in rows], cfg.tau_percentile)
    mine_names = set()
    for p in sorted((out / "stats").glob(f"s{i}of{n}-c*.json")):
        mine_names |= {r["name"] for r in json.loads(p.read_text())}
    mine = [r for r in rows if r["name"] in mine_names]
    ok = accept([r["mean_fg_entropy"] for r in mine], tau)
    accepted = []
    for r, a in zip(mine, ok):
        final = out / f"{r['name']}_sem_map.png"
        cand = out / "candidates" / f"{r['name']}_sem_map.png"
        if a:
            if not final.is_file():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(cand, final)
            accepted.append(dict(r, sem_map=f"{r['name']}_sem_map.png"))
        elif cand.is_file():
            cand.unlink()
    atomic_write_text(out / f"manifest-s{i}of{n}.json", json.dumps({"tau": tau, "accepted": accepted,
                                                                   "n_patches": len(mine)}))
    for r in accepted:
        (out / "candidates" / r["sem_map"]).unlink(missing_ok=True)
    return merge_manifest(cfg, n, tau, rows)


def merge_manifest(cfg: PseudoLabelConfig, n: int, tau: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``manifest.json`` when all shard manifests exist (idempotent). Returns a summary."""
    out = Path(cfg.out)
    parts = [out / f"manifest-s{j}of{n}.json" for j in range(n)]
    summary: dict[str, Any] = {"tau": tau, "n_patches": len(rows), "complete": False}
    if not all(p.is_file() for p in parts):
        return summary
    accepted: list[dict[str, Any]] = []
    for p in parts:
        accepted += json.loads(p.read_text())["accepted"]
    accepted.sort(key=lambda r: r["name"])
    h = np.asarray([r["mean_fg_entropy"] for r in rows], np.float64)
    finite = h[np.isfinite(h)]
    stats = {
        "n_patches": len(rows),
        "n_no_foreground": int((~np.isfinite(h)).sum()),
        "n_accepted": len(accepted),
        "accepted_fraction": len(accepted) / max(1, len(rows)),
        "tau_percentile": cfg.tau_percentile,
        "tau": tau,
        "mean_fg_entropy": {
            "mean": float(finite.mean()) if finite.size else None,
            "percentiles": {str(q): float(np.percentile(finite, q)) for q in (5, 25, 50, 70, 75, 95)} if finite.size else {},
        },
    }
    manifest = {"model": cfg.model, "data": str(Path(cfg.data).resolve()), "entropy": "natural log, eq. 7",
                "stats": stats, "accepted": accepted}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    cand = out / "candidates"
    if cand.is_dir() and not any(p.is_file() for p in cand.rglob("*")):
        shutil.rmtree(cand, ignore_errors=True)
    summary.update(stats)
    summary["complete"] = True
    return summary


def run_pseudo_label(cfg: PseudoLabelConfig, shard: tuple[int, int] = (0, 1), which: str = "both", loaded=None) -> dict[str, Any]:
    """Run pass 1 and/or 2 for one shard; returns a summary (τ, counts)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "manifest.json").is_file() and which != "stats":
        m = json.loads((out / "manifest.json").read_text())
        return dict(m["stats"], complete=True)
    atomic_write_text(out / "pseudo_label_config.json", json.dumps(asdict(cfg), indent=2)) if shard[0] == 0 else None
    if which in ("both", "stats"):
        refs = list_patches(cfg)
        pass_stats(cfg, refs, shard, loaded)
        if which == "stats":
            return {"shard": list(shard), "pass": "stats", "complete": False}
    return pass_write(cfg, shard, wait=(which == "both"))
