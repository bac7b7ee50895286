"""Model registry, configs, backbones and architectures.

As in timm, family files (``zoo``: UperHoVer presets, ``classical``: the rule-based baseline,
and the families of other packages, ``registry.FAMILY_MODULES``) register themselves into the
leaf ``registry``; the registry imports them on first use (one family's file for a contract
lookup, all of them for ``presets()``). Importing this package does not import torch: configs,
contracts and a shipped model loaded into ONNX Runtime (``onnx_runtime``) need none of it.
"""

from .config import ModelConfig, ModelConfigError, PostprocessParams
from .registry import (
    LoadedModel,
    ModelContract,
    WeightsError,
    contract,
    create_model,
    load_model,
    presets,
    register_family,
    register_preset,
    resolve_config,
    select_device,
    shipped_models,
)

__all__ = [
    "LoadedModel",
    "ModelConfig",
    "ModelConfigError",
    "ModelContract",
    "PostprocessParams",
    "WeightsError",
    "contract",
    "create_model",
    "load_model",
    "presets",
    "register_family",
    "register_preset",
    "resolve_config",
    "select_device",
    "shipped_models",
]
