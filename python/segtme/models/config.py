"""Model configuration, stored beside its weights, in three typed parts:

* ``ArchitectureConfig`` — what to build (family, backbone, heads, taxonomy);
* ``IOConfig`` — how it sees pixels (working ``mpp``, tile / overlap / pad multiple in working
  px, input normalisation);
* ``PostprocessParams`` — maps -> nuclei (HV watershed thresholds, sizes in working px).

``ModelConfig`` holds them (``cfg.architecture``, ``cfg.io``, ``cfg.post``) with the model's
name, weights and family extras. On disk it is one flat JSON object, ``<name>.json`` beside
``<name>.safetensors`` — the format every shipped and trained model already uses, read and
written unchanged (``postprocess`` holds only the overrides of the defaults). The flat names
(``cfg.mpp``, ``cfg.tile_size``, ``cfg.backbone``, ...) read the parts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
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
    edge_scale: 0 (default) = the HV maps and their Sobel responses are min-max normalised over the
        foreground of each processed region (HoVer-Net's rule: the edge threshold is relative to the
        strongest boundary in the region, so chunks and tiles of one image can split a nucleus
        differently); > 0 = region-independent: edge = Sobel response of the raw (smoothed) HV maps
        (range [-1, 1]) divided by this fixed value, clipped to [0, 1].
    """

    fg_threshold: float = 0.5
    edge_threshold: float = 0.25
    smooth_sigma: float = 1.0
    min_marker_px: int = 6
    min_object_px: int = 8
    marker_open_radius: int = 1
    edge_scale: float = 0.0

    def __post_init__(self) -> None:
        if not float(self.edge_scale) >= 0.0:  # also rejects NaN
            raise ValueError(f"post-processing edge_scale must be >= 0 (0 = per-region normalisation), got {self.edge_scale}")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> "PostprocessParams":
        return params_from_mapping(cls, d, "post-processing")


#: flat JSON keys of each part, in file order
ARCH_FIELDS = ("arch", "backbone", "backbone_kwargs", "vit_taps", "out_indices", "pyramid_channels", "pyramid_strides",
               "head_hidden", "pool_scales", "heads", "taxonomy")
IO_FIELDS = ("mpp", "tile_size", "tile_overlap", "pad_multiple", "mean", "std", "sem_stride")
FLAT_FIELDS = ("name", *ARCH_FIELDS, *IO_FIELDS, "postprocess", "weights", "backbone_weights", "extra")


@dataclass(frozen=True)
class ArchitectureConfig:
    """What to build.

    arch: model family in the registry ("uperhover", "paget_segformer", "classical", ...).
    backbone: timm model name (ignored by families that do not use timm).
    backbone_kwargs: extra kwargs for ``timm.create_model`` (e.g. the UNI2-h configuration).
    vit_taps: for ViT backbones, the block indices tapped for the pyramid (None: CNN features_only).
    out_indices: for CNN backbones, the ``features_only`` levels used (None: timm's default).
    pyramid_channels: ViT taps only: 1x1 projection widths per tap.
    pyramid_strides: ViT taps only: output stride per tap (bilinear resize of the patch grid).
    head_hidden: UperNet ``hidden_size`` of each decode head.
    pool_scales: UperNet pyramid-pooling scales.
    heads: output heads and their channel counts; "sem" = -1 uses the taxonomy's class count.
    taxonomy: taxonomy name or inline dict (see segtme.taxonomy).
    """

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


@dataclass(frozen=True)
class IOConfig:
    """How the model sees pixels.

    mpp: working resolution in microns per pixel.
    tile_size / tile_overlap: inference tile edge and overlap in working px.
    pad_multiple: tile edges are padded to a multiple of this (e.g. 14 for a patch-14 ViT).
    mean / std: input normalisation (RGB in [0, 1]).
    sem_stride: the grid of the model's "sem" output (its class map), in working px per output
        px: 1 = every working px (the usual); k > 1 = one value per k x k working px block
        (output px ``i`` covers working px ``[k*i, k*i + k)``), e.g. a head that is cheap to
        run and to blend at its native stride. The HV map and further class heads stay at
        every working px. Must divide ``pad_multiple``, so every padded tile holds whole blocks.
    """

    mpp: float = 0.5
    tile_size: int = 256
    tile_overlap: int = 64
    pad_multiple: int = 32
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    sem_stride: int = 1

    def check(self, name: str) -> None:
        """ModelConfigError naming the model and the bad field."""
        if not (isinstance(self.mpp, (int, float)) and math.isfinite(self.mpp) and self.mpp > 0):
            raise ModelConfigError(f"model config {name}: 'mpp' must be a positive number, got {self.mpp!r}")
        if self.tile_size <= 0 or self.tile_overlap < 0 or 2 * self.tile_overlap >= self.tile_size:
            raise ModelConfigError(
                f"model config {name}: need tile_size > 2*tile_overlap >= 0, got "
                f"tile_size={self.tile_size}, tile_overlap={self.tile_overlap}"
            )
        if self.pad_multiple <= 0:
            raise ModelConfigError(f"model config {name}: 'pad_multiple' must be positive")
        if not isinstance(self.sem_stride, int) or self.sem_stride < 1 or self.pad_multiple % self.sem_stride:
            raise ModelConfigError(f"model config {name}: 'sem_stride' must be a positive integer dividing "
                                   f"pad_multiple ({self.pad_multiple}), got {self.sem_stride!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ModelConfigError(f"model config {name}: 'mean'/'std' need 3 values, std > 0")


class ModelConfig:
    """Everything needed to build a model and run it at the right resolution.

    name: registry name (also the default weights file stem).
    architecture / io / post: the three typed parts (see the module doc).
    weights: weights file name relative to the config file (safetensors), or None.
    backbone_weights: optional separate backbone weights (e.g. UNI2-h ``pytorch_model.bin`` is
        refused; a safetensors file or an HF cache directory is accepted).
    extra: family-specific settings (e.g. SegFormer variant, held-out image lists).

    Built from the flat fields of the JSON (``ModelConfig(name=..., arch=..., mpp=...,
    postprocess={...})``) or from the parts (``ModelConfig.from_parts``); validated either way
    (``ModelConfigError`` / ``KeyError`` for an unknown taxonomy).
    """

    def __init__(self, name: str, arch: str = "uperhover", backbone: str = "resnet18",
                 backbone_kwargs: dict[str, Any] | None = None, vit_taps: list[int] | None = None,
                 out_indices: list[int] | None = None, pyramid_channels: list[int] | None = None,
                 pyramid_strides: list[int] | None = None, head_hidden: int = 768, pool_scales: list[int] | None = None,
                 heads: dict[str, int] | None = None, taxonomy: Any = "pannuke6", mpp: float = 0.5, tile_size: int = 256,
                 tile_overlap: int = 64, pad_multiple: int = 32, mean: list[float] | None = None,
                 std: list[float] | None = None, sem_stride: int | None = None, postprocess: Mapping[str, Any] | None = None, weights: str | None = None,
                 backbone_weights: str | None = None, extra: dict[str, Any] | None = None) -> None:
        a = ArchitectureConfig()
        arch_kw = dict(arch=arch, backbone=backbone, backbone_kwargs=backbone_kwargs, vit_taps=vit_taps,
                       out_indices=out_indices, pyramid_channels=pyramid_channels, pyramid_strides=pyramid_strides,
                       head_hidden=head_hidden, pool_scales=pool_scales, heads=heads, taxonomy=taxonomy)
        io_kw = dict(mpp=mpp, tile_size=tile_size, tile_overlap=tile_overlap, pad_multiple=pad_multiple, mean=mean, std=std,
                     sem_stride=sem_stride)
        architecture = replace(a, **{k: v for k, v in arch_kw.items() if v is not None or k in ("vit_taps", "out_indices")})
        io = replace(IOConfig(), **{k: v for k, v in io_kw.items() if v is not None})
        try:
            post = PostprocessParams.from_mapping(postprocess)
        except ValueError as e:
            raise ModelConfigError(f"model config {name}: {e}") from None
        self._set(name, architecture, io, post, weights, backbone_weights, extra)

    def _set(self, name: str, architecture: ArchitectureConfig, io: IOConfig, post: PostprocessParams,
             weights: str | None, backbone_weights: str | None, extra: dict[str, Any] | None) -> None:
        self.name = name
        self.architecture = architecture
        self.io = io
        self.post = post
        self.weights = weights
        self.backbone_weights = backbone_weights
        self.extra = dict(extra or {})
        self.validate()

    @classmethod
    def from_parts(cls, name: str, architecture: ArchitectureConfig, io: IOConfig,
                   post: PostprocessParams | None = None, *, weights: str | None = None,
                   backbone_weights: str | None = None, extra: dict[str, Any] | None = None) -> "ModelConfig":
        self = cls.__new__(cls)
        self._set(name, architecture, io, post or PostprocessParams(), weights, backbone_weights, extra)
        return self

    # ------------------------------------------------------------------ helpers
    def validate(self) -> None:
        if not self.name:
            raise ModelConfigError("model config: 'name' is empty")
        self.io.check(self.name)
        get_taxonomy(self.taxonomy)  # raises KeyError naming the taxonomy

    @property
    def postprocess(self) -> dict[str, Any]:
        """The post-processing overrides of the defaults (the JSON's ``postprocess``)."""
        default = PostprocessParams()
        return {k: v for k, v in asdict(self.post).items() if getattr(default, k) != v}

    @property
    def tax(self) -> Taxonomy:
        return get_taxonomy(self.taxonomy)

    @property
    def num_classes(self) -> int:
        return self.tax.num_classes

    def head_channels(self) -> dict[str, int]:
        return {k: (self.num_classes if v == -1 else int(v)) for k, v in self.heads.items()}

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON form (keys in ``FLAT_FIELDS`` order)."""
        d: dict[str, Any] = {"name": self.name}
        d.update(asdict(self.architecture))
        d.update(asdict(self.io))
        d.update(postprocess=self.postprocess, weights=self.weights, backbone_weights=self.backbone_weights,
                 extra=json.loads(json.dumps(self.extra)))
        if not isinstance(self.taxonomy, str):
            d["taxonomy"] = get_taxonomy(self.taxonomy).to_dict()
        # sem_stride is written only when it is not the usual 1: every config written before the
        # field existed reads and writes back key for key
        return {k: d[k] for k in FLAT_FIELDS if not (k == "sem_stride" and d[k] == 1)}

    def to_json(self, path: str | Path) -> None:
        """Write atomically (temporary name, then rename)."""
        from ..atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        unknown = set(d) - set(FLAT_FIELDS)
        if unknown:
            raise ModelConfigError(f"model config: unknown field(s) {sorted(unknown)}; known: {sorted(FLAT_FIELDS)}")
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
        """A copy with flat fields changed (``postprocess`` replaces the overrides whole)."""
        d = self.to_dict()
        d.update(changes)
        return ModelConfig.from_dict(d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"ModelConfig(name={self.name!r}, architecture={self.architecture!r}, io={self.io!r}, "
                f"post={self.post!r}, weights={self.weights!r})")


def _flat(part: str, key: str) -> property:
    return property(lambda self: getattr(getattr(self, part), key), doc=f"``{part}.{key}``")


for _k in ARCH_FIELDS:
    setattr(ModelConfig, _k, _flat("architecture", _k))
for _k in IO_FIELDS:
    setattr(ModelConfig, _k, _flat("io", _k))
del _k
