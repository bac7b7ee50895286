"""Model registry, configs, backbones and architectures.

As in timm, this package imports its family files (``zoo``: UperHoVer presets, ``classical``:
the rule-based baseline), which register themselves into the leaf ``registry``; families of
other packages are listed in ``registry.FAMILY_MODULES``.
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
from . import classical, zoo  # noqa: E402,F401,I001  (family files register into the registry)

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
