"""Model configuration: one JSON-serialisable dataclass per model, stored beside its weights.

A full model on disk is ``<name>.json`` (this config) + ``<name>.safetensors`` (its state dict).
Units: ``mpp`` is microns per pixel of the model's working resolution; ``tile_size`` and
``tile_overlap`` are pixels at that working resolution.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import SegTMEError
from ..params import params_from_mapping
from ..taxonomy import Taxonomy, get_taxonomy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelConfigError(SegTMEError, ValueError):
    """A model config is malformed (missing or invalid field)."""


@dataclass(frozen=True)
class PostprocessParams:
    """Post-processing knobs (pixels are working-resolution pixels).

    fg_threshold: foreground probability threshold (0-1).
    edge_threshold: HV-edge strength above which a pixel is not a marker (0-1).
    smooth_sigma: Gaussian sigma (px) applied to the HV maps before the Sobel gradient.
    min_marker_px: markers smaller than this (px) are dropped.
    min_object_px: final instances smaller than this (px) are dropped.
    marker_open_radius: radius (px) of the disk used to open the marker mask.
    """

    fg_threshold: float = 0.5
    edge_threshold: float = 0.25
    smooth_sigma: float = 1.0
    min_marker_px: int = 6
    min_object_px: int = 8
    marker_open_radius: int = 1

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> "PostprocessParams":
        return params_from_mapping(cls, d, "post-processing")


@dataclass
class ModelConfig:
    """Everything needed to build a model and run it at the right resolution.

    name: registry name (also the default weights file stem).
    arch: model family in the registry: "uperhover", "paget_segformer", "classical".
    backbone: timm model name (ignored by families that do not use timm).
    backbone_kwargs: extra kwargs for ``timm.create_model`` (e.g. the UNI2-h configuration).
    vit_taps: for ViT backbones, the block indices tapped for the pyramid (None: CNN features_only).
    out_indices: for CNN backbones, the ``features_only`` levels used (None: timm's default).
    pyramid_channels: ViT taps only: 1x1 projection widths per tap.
    pyramid_strides: ViT taps only: output stride per tap (bilinear resize of the patch grid).
    head_hidden: UperNet ``hidden_size`` of each decode head.
    pool_scales: UperNet pyramid-pooling scales.
    heads: output heads and their channel counts; "sem" uses the taxonomy's class count.
    taxonomy: taxonomy name or inline dict (see segtme.taxonomy).
    mpp: working resolution in microns per pixel.
    tile_size / tile_overlap: inference tile edge and overlap in working-resolution pixels.
    pad_multiple: input edges are padded to a multiple of this (e.g. 14 for a patch-14 ViT).
    mean / std: input normalisation (RGB in [0, 1]).
    postprocess: keyword overrides for the HV-watershed post-processing.
    weights: weights file name relative to the config file (safetensors), or None.
    backbone_weights: optional separate backbone weights (e.g. UNI2-h ``pytorch_model.bin`` is
        refused; a safetensors file or an HF cache directory is accepted).
    extra: family-specific settings (e.g. SegFormer variant).
    """

    name: str
    arch: str = "uperhover"
    backbone: str = "resnet18"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    vit_taps: list[int] | None = None
    out_indices: list[int] | None = None
    pyramid_channels: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    pyramid_strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    head_hidden: int = 768
    pool_scales: list[int] = field(default_factory=lambda: [1, 2, 3, 6])
    heads: dict[str, int] = field(default_factory=lambda: {"sem": -1, "hv": 2})
    taxonomy: Any = "pannuke6"
    mpp: float = 0.5
    tile_size: int = 256
    tile_overlap: int = 64
    pad_multiple: int = 32
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    postprocess: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    backbone_weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ helpers
    def validate(self) -> None:
        if not self.name:
            raise ModelConfigError("model config: 'name' is empty")
        if not (isinstance(self.mpp, (int, float)) and math.isfinite(self.mpp) and self.mpp > 0):
            raise ModelConfigError(f"model config {self.name}: 'mpp' must be a positive number, got {self.mpp!r}")
        if self.tile_size <= 0 or self.tile_overlap < 0 or 2 * self.tile_overlap >= self.tile_size:
            raise ModelConfigError(
                f"model config {self.name}: need tile_size > 2*tile_overlap >= 0, got "
                f"tile_size={self.tile_size}, tile_overlap={self.tile_overlap}"
            )
        if self.pad_multiple <= 0:
            raise ModelConfigError(f"model config {self.name}: 'pad_multiple' must be positive")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ModelConfigError(f"model config {self.name}: 'mean'/'std' need 3 values, std > 0")
        get_taxonomy(self.taxonomy)  # raises KeyError naming the taxonomy
        try:
            PostprocessParams.from_mapping(self.postprocess)
        except ValueError as e:
            raise ModelConfigError(f"model config {self.name}: {e}") from None

    @property
    def post(self) -> PostprocessParams:
        """``postprocess`` (the JSON's mapping of overrides) as typed ``PostprocessParams``."""
        return PostprocessParams.from_mapping(self.postprocess)

    @property
    def tax(self) -> Taxonomy:
        return get_taxonomy(self.taxonomy)

    @property
    def num_classes(self) -> int:
        return self.tax.num_classes

    def head_channels(self) -> dict[str, int]:
        return {k: (self.num_classes if v == -1 else int(v)) for k, v in self.heads.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not isinstance(self.taxonomy, str):
            d["taxonomy"] = get_taxonomy(self.taxonomy).to_dict()
        return d

    def to_json(self, path: str | Path) -> None:
        """Write atomically (temporary name, then rename)."""
        from ..export.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelConfigError(f"model config: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        if "name" not in d:
            raise ModelConfigError("model config: missing required field 'name'")
        return cls(**dict(d))

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelConfigError(f"model config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"model config {path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "ModelConfig":
        d = self.to_dict()
        d.update(changes)
        return ModelConfig.from_dict(d)
