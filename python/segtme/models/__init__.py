"""Model registry, configs, backbones and architectures."""

from .config import ModelConfig, ModelConfigError
from .registry import (
    LoadedModel,
    WeightsError,
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
    "WeightsError",
    "create_model",
    "load_model",
    "presets",
    "register_family",
    "register_preset",
    "resolve_config",
    "select_device",
    "shipped_models",
]
