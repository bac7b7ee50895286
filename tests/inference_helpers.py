"""Test helpers for the inference tests: tiny models that run fast on CPU.

``threshold_model()``: a fixed (not learned), *local* model in the LoadedModel interface: a
Gaussian-blurred darkness threshold gives the nucleus foreground (class 1 "Neoplastic" for
bluish-dark, class 2 "Inflammatory" for very dark), HV = 0 (each blob is one instance). Its
receptive field is a few pixels, so tiled / chunked predictions must equal whole-image ones,
which makes border de-duplication testable on real H&E without trained weights.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segtme.models import LoadedModel, ModelConfig


class ThresholdNet(nn.Module):
    def __init__(self, cfg: ModelConfig, thr: float = 0.42, gain: float = 40.0):
        super().__init__()
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))
        g = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        k = (g[:, None] * g[None, :]) / 256.0
        self.register_buffer("kernel", k.view(1, 1, 5, 5))
        self.thr, self.gain, self.C = thr, gain, cfg.num_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rgb = x * self.std + self.mean  # back to [0, 1]
        dark = 1.0 - rgb.mean(1, keepdim=True)
        dark = F.conv2d(F.pad(dark, (2, 2, 2, 2), mode="replicate"), self.kernel)
        fg = self.gain * (dark - (1.0 - self.thr))
        very = self.gain * (dark - (1.0 - self.thr + 0.07))
        B, _, H, W = x.shape
        sem = torch.full((B, self.C, H, W), -20.0, dtype=x.dtype, device=x.device)
        sem[:, 0:1] = 0.0
        sem[:, 1:2] = fg
        sem[:, 2:3] = very
        return {"sem": sem, "hv": torch.zeros(B, 2, H, W, dtype=x.dtype, device=x.device)}


def threshold_model(tile: int = 64, overlap: int = 16, mpp: float = 0.5) -> LoadedModel:
    cfg = ModelConfig(name="threshold_test", arch="uperhover", taxonomy="pannuke6", mpp=mpp,
                      tile_size=tile, tile_overlap=overlap, pad_multiple=16,
                      postprocess={"min_object_px": 10})
    return LoadedModel(cfg, ThresholdNet(cfg).eval(), torch.device("cpu"), "test:threshold")


def tiny_random_model(seed: int = 0, name: str = "uperhover_vit_tiny") -> LoadedModel:
    """A preset with random weights (seeded), CPU."""
    from segtme.models import load_model

    torch.manual_seed(seed)
    return load_model(name, "cpu", allow_random=True)


def centroid_match(a: np.ndarray, b: np.ndarray, tol: float) -> tuple[int, int]:
    """(#a with a b within tol, #b with an a within tol) for (N, 2) centroid arrays."""
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return 0, 0
    da, _ = cKDTree(b).query(a)
    db, _ = cKDTree(a).query(b)
    return int((da <= tol).sum()), int((db <= tol).sum())
