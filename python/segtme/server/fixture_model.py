"""A tiny deterministic *fixture* model for server tests, demos and the server benchmark.

**Not a trained model and not for analysis.** Its output depends only on a small neighbourhood
of each pixel (a fixed 5x5 smoothing of a colour-deconvolution haematoxylin channel), so
segmenting an image as overlapping streamed tiles gives exactly the same nuclei as segmenting it
whole, except within a few pixels of a tile edge. That makes it the right instrument to test the
server's tile plumbing (rescaling, padding, coordinate mapping, the ownership rule, annotation
clipping) independently of a learned network's long-range context. It has no HV head, so
instances are the connected components of the foreground (``pipeline.nuclei_from_maps``).

Arch name: ``server_fixture_hematoxylin``; registered with ``register()`` (idempotent). The
weights (the H-channel vector, smoothing kernel and logit gains) are ordinary parameters saved to
safetensors by ``save_fixture_model`` so the model also loads through ``load_model(path)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.config import ModelConfig

ARCH = "server_fixture_hematoxylin"

#: the fixture's density units: stain.py's base-10 H / E optical densities times these factors
#: (keeps the class rules below in round numbers; measured on MoNuSeg: the former natural-log
#: two-stain unmixing was 3.5x / 2.8x stain.py's densities)
_H_UNIT = 3.5
_E_UNIT = 2.8


class HematoxylinFixtureNet(nn.Module):
    """sem logits over the taxonomy from local haematoxylin/eosin optical density.

    Input: (B, 3, H, W) RGB normalised with ``cfg.mean/std``. Output: ``{"sem": (B, C, H, W)}``.
    H / E: the package's one colour deconvolution (``segtme.stain``: base-10 OD projected with
    ``HED_FROM_RGB``), smoothed 5x5. fg logit = gain * (H_smooth - threshold); the nucleus
    classes split by H and E density bands.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.num_classes
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1))
        # base-10 optical density -> (H, E) densities: stain.HED_FROM_RGB's first two columns
        from ..stain import HED_FROM_RGB

        self.unmix = nn.Parameter(torch.tensor(HED_FROM_RGB[:, :2].T, dtype=torch.float32), requires_grad=False)
        g = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        k = torch.outer(g, g)
        self.smooth = nn.Parameter((k / k.sum()).view(1, 1, 5, 5).repeat(2, 1, 1, 1), requires_grad=False)
        ex = dict(cfg.extra or {})
        self.threshold = nn.Parameter(torch.tensor(float(ex.get("h_threshold", 0.35))), requires_grad=False)
        self.gain = nn.Parameter(torch.tensor(float(ex.get("gain", 70.0))), requires_grad=False)
        # per nucleus class: logit = a*h + b*e + c with h = (H - threshold) * _H_UNIT, e = E * _E_UNIT
        # (relative to the other nucleus classes): class 1 baseline, 2 very dark (h > 0.6),
        # 3 eosin-rich (e > 0.5), 4 rare, 5 dark and eosin-rich together
        w = torch.zeros(C, 3)
        if C > 1:
            cols = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, -1.8], [0.0, 5.0, -2.5], [0.0, 0.0, -5.0],
                                 [1.0, 1.0, -1.6]])
            for c in range(1, C):
                w[c] = cols[(c - 1) % len(cols)]
        self.class_w = nn.Parameter(w, requires_grad=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rgb = (x * self.std + self.mean).clamp(1.0 / 255.0, 1.0)
        od = -torch.log10(rgb)
        he = torch.einsum("kc,bchw->bkhw", self.unmix, od)
        he = F.conv2d(F.pad(he, (2, 2, 2, 2), mode="replicate"), self.smooth, groups=2)
        h, e = he[:, :1], he[:, 1:2]
        fg = self.gain * (h - self.threshold)
        feats = torch.cat([(h - self.threshold) * _H_UNIT, e * _E_UNIT, torch.ones_like(h)], dim=1)  # (B, 3, H, W)
        cls = torch.einsum("kf,bfhw->bkhw", self.class_w, feats)
        sem = cls + 0.5 * fg  # nucleus classes
        sem = torch.cat([-0.5 * fg, sem[:, 1:]], dim=1)  # channel 0 = background
        return {"sem": sem}


def fixture_config(name: str = "fixture", mpp: float = 0.5, tile_size: int = 192, tile_overlap: int = 64,
                   h_threshold: float = 0.35) -> ModelConfig:
    """Config of the fixture model (pannuke6 classes, no HV head)."""
    return ModelConfig(
        name=name, arch=ARCH, backbone="none", heads={"sem": -1}, taxonomy="pannuke6", mpp=mpp,
        tile_size=tile_size, tile_overlap=tile_overlap, pad_multiple=1,
        postprocess={"min_object_px": 8}, extra={"h_threshold": h_threshold, "gain": 70.0},
    )


def register() -> None:
    """Register the fixture family in the model registry (idempotent)."""
    from ..models import registry

    if ARCH not in registry.families():
        registry.register_family(ARCH)(HematoxylinFixtureNet)


def save_fixture_model(directory: str | Path, **kw) -> Path:
    """Write ``<name>.json`` + ``<name>.safetensors`` into ``directory``; returns the json path."""
    from safetensors.torch import save_file

    from ..export.atomic import atomic_write

    register()
    cfg = fixture_config(**kw)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace(weights=f"{cfg.name}.safetensors")
    net = HematoxylinFixtureNet(cfg)
    with atomic_write(d / f"{cfg.name}.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    cfg.to_json(d / f"{cfg.name}.json")
    return d / f"{cfg.name}.json"


def hematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density of an (H, W, 3) uint8 image in the units of ``h_threshold``
    (``segtme.stain.haematoxylin_od``, for tuning the threshold)."""
    from ..stain import haematoxylin_od

    return haematoxylin_od(rgb)
