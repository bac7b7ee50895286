"""Model set-up for a training run: the ``ModelConfig`` from ``[model]``, a fresh module with
optional full-model / backbone weights, and freezing of parameters the forward pass never uses."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..models.config import ModelConfig
from ..models.registry import (
    create_model,
    find_uni2h_checkpoint,
    load_backbone_weights,
    load_state_dict_strict,
    presets,
    read_state_dict,
    resolve_config,
)

log = logging.getLogger(__name__)

MODEL_KEYS_NOT_CONFIG = ("preset", "config", "init_weights", "init_strict", "init_rename")


def rename_keys(sd: dict[str, Any], rename: dict[str, str] | None) -> dict[str, Any]:
    """``sd`` with each key starting with a prefix of ``rename`` given the new prefix instead
    (first matching prefix; e.g. ``{"heads.sem." = "heads.nuc."}`` loads a nucleus model's class
    head into ``paget_uperhover``'s "nuc" head)."""
    if not rename:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        for old, new in rename.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def build_model_config(model_section: dict[str, Any]) -> ModelConfig:
    """ModelConfig from ``[model]``: a preset or a config JSON, plus ModelConfig-field overrides."""
    m = dict(model_section)
    preset, cfg_path = m.pop("preset", None), m.pop("config", None)
    for k in MODEL_KEYS_NOT_CONFIG:
        m.pop(k, None)
    if preset and cfg_path:
        raise InputError("[model]: give either preset or config, not both")
    if preset:
        if preset not in presets():
            raise InputError(f"[model]: unknown preset {preset!r}; known: {sorted(presets())}")
        base = presets()[preset]
    elif cfg_path:
        base, _ = resolve_config(str(cfg_path))
    else:
        if "name" not in m:
            raise InputError("[model]: need preset = ..., config = ..., or an inline config with name")
        return ModelConfig.from_dict(m)
    bw = m.pop("backbone_weights", None)
    cfg = base.replace(**m)
    return cfg.replace(backbone_weights=bw) if bw is not None else cfg


def init_model(cfg: ModelConfig, model_section: dict[str, Any]) -> tuple[nn.Module, str]:
    """Fresh model (random heads) + optional full-model or backbone weights (``init_weights``,
    its keys renamed by ``init_rename`` {old prefix: new prefix}; ``init_strict = false``: load
    the tensors whose name and shape match). Returns (module, source)."""
    module = create_model(cfg.replace(weights=None))
    src = "random-init"
    iw = model_section.get("init_weights")
    if iw:
        sd = rename_keys(read_state_dict(iw), model_section.get("init_rename"))
        if model_section.get("init_strict", True):
            load_state_dict_strict(module, sd, str(iw))
        else:
            own = module.state_dict()
            fit = {k: v for k, v in sd.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
            module.load_state_dict(fit, strict=False)
            log.info("init_weights %s: loaded %d/%d tensors (non-strict)", iw, len(fit), len(own))
        src = f"init:{iw}"
    bw = cfg.backbone_weights
    if bw:
        p = find_uni2h_checkpoint(None if bw == "auto" else bw)
        load_backbone_weights(module, p)
        src += f" + backbone:{p}"
    return module, src


# --------------------------------------------------------------------------- data


def freeze_unused_parameters(model: nn.Module, tile: int, device: torch.device) -> list[str]:
    """Probe one forward/backward (eval mode: BN statistics untouched) on a zero tile and set
    ``requires_grad=False`` on parameters that get no gradient. Returns their names."""
    was = model.training
    model.eval()
    x = torch.zeros(1, 3, tile, tile, device=device)
    out = model(x)
    total = sum(v.float().sum() for v in out.values())
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    model.train(was)
    unused = {id(p) for p, g in zip(params, grads) if g is None}
    names = []
    for n, p in model.named_parameters():
        if id(p) in unused:
            p.requires_grad_(False)
            names.append(n)
    return names
