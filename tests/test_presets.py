"""Every registered preset and shipped model config (timm's pattern): build it, run a small forward
pass, and check the outputs against the contract its family declared at registration.

Models above ``REAL_PARAMS`` parameters (UNI2-h: 681 M) are built and run on torch's meta
device: shapes and keys are checked without allocating weights. The rest run for real on CPU
with random weights and must give finite outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtme.models import registry
from segtme.models.config import ModelConfig

#: models with more parameters than this are checked on the meta device
REAL_PARAMS = 30_000_000


def _all_configs() -> dict[str, ModelConfig]:
    cfgs = dict(registry.presets())
    for name, path in registry.shipped_models().items():
        cfgs.setdefault(f"shipped:{name}", ModelConfig.from_json(path))
    return cfgs


CONFIGS = _all_configs()


def test_every_family_has_a_contract_and_every_preset_a_family():
    assert {"uperhover", "classical", "paget_segformer", "mitosis_cnn"} <= set(registry.families())
    for name, cfg in CONFIGS.items():
        c = registry.contract(cfg)  # raises for an unknown arch
        assert isinstance(c, registry.ModelContract), name
        if c.taxonomy is not None:
            assert cfg.tax.name == c.taxonomy, f"{name}: config taxonomy {cfg.tax.name} vs contract {c.taxonomy}"
        for k in c.outputs:
            assert k in cfg.head_channels(), f"{name}: contract output {k!r} is not a configured head"


def _input_edge(cfg: ModelConfig) -> int:
    m = int(cfg.pad_multiple)
    edge = max(64, m * 4)
    if cfg.vit_taps is not None:
        edge = max(edge, int(cfg.backbone_kwargs.get("patch_size", 14)) * 4)
    return edge + (-edge) % m


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_preset_builds_runs_and_keeps_its_contract(name):
    cfg = CONFIGS[name]
    c = registry.contract(cfg)
    with torch.device("meta"):
        meta = registry.create_model(cfg)
    n_params = sum(p.numel() for p in meta.parameters())
    if c.instances == "hook" and not c.outputs:
        # rule-based: no tensor forward; the hook gives labels on the input grid
        module = registry.create_model(cfg)
        rgb = np.full((96, 80, 3), 230, np.uint8)
        rgb[30:50, 20:40] = (60, 40, 120)
        inst, cls, prob = module.predict_instances(rgb, float(cfg.mpp))
        assert inst.shape == rgb.shape[:2] and len(cls) == len(prob) == int(inst.max())
        return
    real = n_params <= REAL_PARAMS
    module = registry.create_model(cfg).eval() if real else meta.eval()
    dev = torch.device("cpu") if real else torch.device("meta")
    if c.dense:
        e = _input_edge(cfg)
        x = torch.rand(2, 3, e, e, generator=torch.Generator().manual_seed(0)).to(dev) if real else torch.empty(2, 3, e, e, device=dev)
    else:
        e = int(cfg.tile_size)
        x = torch.rand(2, 3, e, e).to(dev) if real else torch.empty(2, 3, e, e, device=dev)
    with torch.inference_mode():
        y = module(x)
    assert isinstance(y, dict) and set(y) == set(c.outputs), f"{name}: outputs {sorted(y)} vs contract {c.outputs}"
    ch = cfg.head_channels()
    for k, v in y.items():
        k_px = int(cfg.io.sem_stride) if k == "sem" else 1  # a class map at its own stride (eval mode)
        assert k_px == 1 or c.coarse_sem, f"{name}: sem_stride {k_px} but the family's contract has no coarse_sem"
        want = (2, ch[k], e // k_px, e // k_px) if c.dense else (2,)
        if not c.dense and v.ndim == 2:
            want = (2, ch[k])
        assert tuple(v.shape) == want, f"{name}: {k} has shape {tuple(v.shape)}, contract says {want}"
        if real:
            assert torch.isfinite(v).all(), f"{name}: {k} is not finite"
    if "sem" in c.outputs:
        assert ch["sem"] == cfg.num_classes
