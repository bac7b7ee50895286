"""Training of the mitosis teacher: ``segtme train CONFIG`` with ``task = "mitosis"`` at the top
of the config (``configs/mitosis.toml``).

Config sections (all optional except ``task``)::

    task = "mitosis"
    [data]   dir = "../shared/data"   cache = "runs/mitosis/crops_48.npz"   store_px = 48
             per_image = 120   held_out_fraction = 0.2   seed = 0
    [model]  preset = "mitosis"
    [run]    out_dir = "runs/mitosis"   max_steps = 3000   batch_size = 128   lr = 2e-3
             weight_decay = 1e-4   pos_fraction = 0.33   seed = 0   log_every = 100   threads = 0
    [augment] scale = [0.85, 1.15]   stain = 0.15   blur_p = 0.3   noise = 0.02

Crops are stored at the model's MPP with ``store_px`` (> ``tile_size``) px so that random
shifts (±3 px), rotation, scaling and flips never reach the border. The held-out figures
(``metrics.json``; ``evaluate``): recall / precision / F1 at the model's threshold and the ROC
AUC on held-out slides (positives) vs held-out images (negatives), the false-positive rate per
negative folder, normal-vs-atypical accuracy on held-out mitoses, and a *shortcut probe*: a
logistic regression on trivial crop statistics (mean / spread of R, G, B, Laplacian energy) —
if that alone separates the held-out sets, the datasets differ in ways a classifier can use.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .data import CropSet, build_crop_set

log = logging.getLogger(__name__)


@dataclass
class MitosisDataConfig:
    dir: str = "../shared/data"
    cache: str | None = "runs/mitosis/crops_48.npz"
    store_px: int = 48
    per_image: int = 120
    held_out_fraction: float = 0.2
    seed: int = 0


@dataclass
class MitosisRunConfig:
    out_dir: str = "runs/mitosis"
    max_steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pos_fraction: float = 0.33
    atypical_weight: float = 0.5
    seed: int = 0
    log_every: int = 100
    threads: int = 0


@dataclass
class MitosisAugment:
    scale: tuple[float, float] = (0.85, 1.15)
    shift_px: float = 3.0
    stain: float = 0.15
    blur_p: float = 0.3
    noise: float = 0.02


@dataclass
class MitosisTrainConfig:
    data: MitosisDataConfig = field(default_factory=MitosisDataConfig)
    run: MitosisRunConfig = field(default_factory=MitosisRunConfig)
    augment: MitosisAugment = field(default_factory=MitosisAugment)
    preset: str = "mitosis"


def _section(cls, d: Mapping[str, Any] | None, name: str):
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    bad = set(d) - known
    if bad:
        raise InputError(f"[{name}]: unknown key(s) {sorted(bad)}; known: {sorted(known)}")
    if "scale" in d:
        d["scale"] = tuple(float(v) for v in d["scale"])
    try:
        return cls(**d)
    except TypeError as e:
        raise InputError(f"[{name}]: {e}") from None


def parse_config(d: Mapping[str, Any]) -> MitosisTrainConfig:
    if d.get("task") != "mitosis":
        raise InputError("mitosis training config needs task = \"mitosis\"")
    bad = set(d) - {"task", "data", "run", "model", "augment"}
    if bad:
        raise InputError(f"mitosis config: unknown section(s) {sorted(bad)}")
    model = dict(d.get("model", {}))
    preset = str(model.pop("preset", "mitosis"))
    if model:
        raise InputError(f"[model]: only 'preset' is supported, got {sorted(model)}")
    cfg = MitosisTrainConfig(_section(MitosisDataConfig, d.get("data"), "data"),
                             _section(MitosisRunConfig, d.get("run"), "run"),
                             _section(MitosisAugment, d.get("augment"), "augment"), preset)
    if cfg.run.max_steps <= 0 or cfg.run.batch_size <= 0 or not (0 < cfg.run.pos_fraction < 1):
        raise InputError("[run]: need max_steps > 0, batch_size > 0 and 0 < pos_fraction < 1")
    return cfg


# --------------------------------------------------------------------------- augmentation
def augment_batch(x: torch.Tensor, out_px: int, aug: MitosisAugment, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) RGB [0, 1] stored crops -> (B, 3, out_px, out_px) augmented centre crops:
    random rotation (any angle) + flip + scale + shift (one bilinear ``grid_sample``), stain
    jitter in optical density (per channel gain and offset), Gaussian blur, noise."""
    b, _, s, _ = x.shape
    dev = x.device
    ang = torch.rand(b, generator=gen) * 2 * math.pi
    sc = aug.scale[0] + torch.rand(b, generator=gen) * (aug.scale[1] - aug.scale[0])
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * aug.shift_px * 2 / s
    k = out_px / s / sc  # half-extent of the output window in normalised input coords
    cos, sin = torch.cos(ang) * k, torch.sin(ang) * k
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(dev), (b, 3, out_px, out_px), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if aug.stain > 0:
        od = -torch.log((y * 255 + 1) / 256)
        gain = 1 + (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1) * aug.stain
        off = (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1) * aug.stain * 0.2
        y = ((torch.exp(-(od * gain.to(dev) + off.to(dev))) * 256 - 1) / 255).clamp(0, 1)
    if aug.blur_p > 0:
        sel = torch.rand(b, generator=gen) < aug.blur_p
        if sel.any():
            sig = 0.5 + torch.rand(1, generator=gen).item() * 0.7
            r = torch.arange(-2, 3, dtype=torch.float32)
            w1 = torch.exp(-(r**2) / (2 * sig * sig))
            w1 = (w1 / w1.sum()).to(dev)
            z = y[sel]
            z = F.conv2d(F.pad(z, (2, 2, 0, 0), mode="reflect"), w1.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
            z = F.conv2d(F.pad(z, (0, 0, 2, 2), mode="reflect"), w1.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
            y = y.clone()
            y[sel] = z
    if aug.noise > 0:
        y = (y + torch.randn(y.shape, generator=gen).to(dev) * aug.noise).clamp(0, 1)
    return y


def centre(x: np.ndarray, out_px: int) -> np.ndarray:
    """Centre ``out_px`` crop of (N, S, S, 3) crops."""
    s = x.shape[1]
    a = (s - out_px) // 2
    return x[:, a:a + out_px, a:a + out_px]


def to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0


# --------------------------------------------------------------------------- metrics
def roc_auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    pos, neg = label == 1, label == 0
    if not pos.any() or not neg.any():
        return None
    r = rankdata(score)
    return float((r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def binary_counts(pred: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    tp = int((pred & (label == 1)).sum())
    fp = int((pred & (label == 0)).sum())
    fn = int((~pred & (label == 1)).sum())
    tn = int((~pred & (label == 0)).sum())
    rec = tp / (tp + fn) if tp + fn else None
    prec = tp / (tp + fp) if tp + fp else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "recall": rec, "precision": prec, "f1": f1}


def trivial_features(x: np.ndarray) -> np.ndarray:
    """Per crop: mean and standard deviation of R, G, B and the mean squared Laplacian of grey
    (sharpness / texture energy) — (N, 7) float."""
    f = x.astype(np.float32) / 255.0
    g = f.mean(axis=3)
    lap = g[:, 1:-1, 1:-1] * 4 - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    return np.concatenate([f.mean(axis=(1, 2)), f.std(axis=(1, 2)), (lap**2).mean(axis=(1, 2))[:, None]], 1)


def logistic_probe(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, steps: int = 500) -> np.ndarray:
    """Balanced logistic regression (standardised features, L-BFGS) -> held-out scores."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a = torch.tensor((xtr - mu) / sd, dtype=torch.float64)
    y = torch.tensor(ytr, dtype=torch.float64)
    w = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    pw = (y == 0).sum() / max(1, int((y == 1).sum()))
    opt = torch.optim.LBFGS([w, b], max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a @ w + b, y, pos_weight=pw) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (torch.tensor((xte - mu) / sd, dtype=torch.float64) @ w + b).numpy()


@torch.no_grad()
def predict_crops(module: torch.nn.Module, x: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(p_mitosis, p_atypical) for (N, S, S, 3) uint8 crops already at the model's size."""
    module.eval()
    pm, pa = [], []
    for a in range(0, len(x), batch):
        out = module(to_tensor(x[a:a + batch]))
        pm.append(torch.sigmoid(out["mitosis"]).numpy())
        pa.append(torch.sigmoid(out["atypical"]).numpy())
    if not pm:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(pm), np.concatenate(pa)


def evaluate(module: torch.nn.Module, cs: CropSet, out_px: int, threshold: float) -> dict[str, Any]:
    """Held-out figures (see the module doc)."""
    te = cs.subset(cs.held_out)
    tr = cs.subset(~cs.held_out)
    pm, pa = predict_crops(module, centre(te.x, out_px))
    lab = te.mitotic.astype(np.int64)
    res: dict[str, Any] = {"threshold": threshold, "n_pos": int(lab.sum()), "n_neg": int((lab == 0).sum()),
                           "n_pos_slides": int(len(set(te.group[lab == 1]))),
                           "n_neg_images": int(len(set(te.group[lab == 0]))),
                           "auc": roc_auc(pm, lab), **binary_counts(pm >= threshold, lab)}
    res["fp_rate_by_folder"] = {str(d): float((pm[(te.dataset == d)] >= threshold).mean())
                                for d in sorted(set(te.dataset[lab == 0]))}
    res["recall_by_source"] = {str(d): float((pm[(te.dataset == d)] >= threshold).mean())
                               for d in sorted(set(te.dataset[lab == 1]))}
    pts = []
    for t in (0.3, 0.5, 0.7, 0.9):
        c = binary_counts(pm >= t, lab)
        pts.append({"threshold": t, "recall": c["recall"], "precision": c["precision"]})
    res["pr_points"] = pts
    m = lab == 1
    aty = te.atypical[m].astype(np.int64)
    pred_a = pa[m] >= 0.5
    acc = float((pred_a == (aty == 1)).mean()) if m.any() else None
    rec_a = float(pred_a[aty == 1].mean()) if (aty == 1).any() else None
    rec_n = float((~pred_a[aty == 0]).mean()) if (aty == 0).any() else None
    res["atypical"] = {"n": int(m.sum()), "n_atypical": int((aty == 1).sum()), "accuracy": acc,
                       "balanced_accuracy": None if rec_a is None or rec_n is None else (rec_a + rec_n) / 2,
                       "majority_baseline": float(max((aty == 1).mean(), (aty == 0).mean())) if m.any() else None,
                       "auc": roc_auc(pa[m], aty)}
    probe = logistic_probe(trivial_features(centre(tr.x, out_px)), tr.mitotic.astype(np.float64),
                           trivial_features(centre(te.x, out_px)))
    res["shortcut_probe_auc"] = roc_auc(probe, lab)
    return res


# --------------------------------------------------------------------------- training
def train_mitosis(cfg: MitosisTrainConfig) -> dict[str, Any]:
    """Train, evaluate on the held-out split, save ``<out_dir>/mitosis.{json,safetensors}`` and
    ``metrics.json``; returns the metrics."""
    from ..models.registry import create_model, presets
    from ..train.trainer import save_safetensors

    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    pcfg = presets().get(cfg.preset)
    if pcfg is None or pcfg.arch != "mitosis_cnn":
        raise InputError(f"[model] preset {cfg.preset!r} is not a mitosis_cnn preset")
    out_px = int(pcfg.tile_size)
    if cfg.data.store_px < out_px + 2 * cfg.augment.shift_px:
        raise InputError(f"[data] store_px {cfg.data.store_px} too small for {out_px} px crops with shifts")
    data_dir = Path(cfg.data.dir)
    if not data_dir.is_dir():
        raise InputError(f"[data] dir not found: {data_dir}")
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cs = build_crop_set(data_dir, cfg.data.store_px, float(pcfg.mpp), per_image=cfg.data.per_image,
                        held_out_fraction=cfg.data.held_out_fraction, seed=cfg.data.seed,
                        cache=Path(cfg.data.cache) if cfg.data.cache else None)
    tr = cs.subset(~cs.held_out)
    pos = np.flatnonzero(tr.mitotic == 1)
    neg = np.flatnonzero(tr.mitotic == 0)
    torch.manual_seed(cfg.run.seed)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    rng = np.random.default_rng(cfg.run.seed)
    module = create_model(pcfg)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.run.lr, weight_decay=cfg.run.weight_decay)
    xt = torch.from_numpy(tr.x).permute(0, 3, 1, 2)  # uint8 (N, 3, S, S)
    npos = max(1, round(cfg.run.batch_size * cfg.run.pos_fraction))
    log_rows = []
    t0 = time.time()
    module.train()
    for step in range(cfg.run.max_steps):
        lr = cfg.run.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.run.max_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = np.concatenate([rng.choice(pos, npos), rng.choice(neg, cfg.run.batch_size - npos)])
        x = augment_batch(xt[idx].float() / 255.0, out_px, cfg.augment, gen)
        y = torch.from_numpy(tr.mitotic[idx].astype(np.float32))
        a = torch.from_numpy(tr.atypical[idx].astype(np.float32))
        o = module(x)
        loss = F.binary_cross_entropy_with_logits(o["mitosis"], y)
        am = a >= 0
        if am.any():
            loss = loss + cfg.run.atypical_weight * F.binary_cross_entropy_with_logits(o["atypical"][am], a[am])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % cfg.run.log_every == 0 or step == 0:
            row = {"step": step + 1, "loss": round(float(loss), 4), "lr": lr, "s": round(time.time() - t0, 1)}
            log_rows.append(row)
            log.info("mitosis step %(step)d loss %(loss).4f", row)
            print(json.dumps(row), flush=True)
    module.eval()
    threshold = float(pcfg.extra.get("threshold", 0.5))
    metrics = evaluate(module, cs, out_px, threshold)
    metrics["train"] = {"n_pos": int(len(pos)), "n_neg": int(len(neg)), "steps": cfg.run.max_steps,
                        "seconds": round(time.time() - t0, 1),
                        "n_pos_slides": int(len(set(tr.group[tr.mitotic == 1]))),
                        "n_neg_images": int(len(set(tr.group[tr.mitotic == 0])))}
    held_slides = sorted(set(cs.group[(cs.mitotic == 1) & cs.held_out]))
    held_imgs = sorted(set(cs.group[(cs.mitotic == 0) & cs.held_out]))
    mcfg = pcfg.replace(weights="mitosis.safetensors", extra={
        **pcfg.extra, "held_out": {"amibr_slides": held_slides, "negative_images": held_imgs},
        "training_config": asdict(cfg), "metrics": {k: metrics[k] for k in ("recall", "precision", "f1", "auc")},
        "licence": "CC BY-NC-SA 4.0 (inherited from MIDOG21 / MoNuSeg): non-commercial research use; see MITOSIS_MODEL_CARD.md",
    })
    sd = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_safetensors(sd, out / "mitosis.safetensors", {"model": "mitosis"})
    mcfg.to_json(out / "mitosis.json")
    from ..export.atomic import atomic_write_text

    atomic_write_text(out / "metrics.json", json.dumps({"metrics": metrics, "log": log_rows}, indent=1, default=str))
    return metrics


def train_mitosis_from_config(d: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``segtme train`` entry for ``task = "mitosis"`` configs; ``overrides`` like
    {"run.max_steps": 10}."""
    d = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}
    for k, v in (overrides or {}).items():
        sec, _, key = k.partition(".")
        d.setdefault(sec, {})[key] = v
    return train_mitosis(parse_config(d))
