"""Training-run configuration: one TOML (``tomllib``) or YAML (``pyyaml``) file per run.

Sections (all optional except ``[model]`` and at least one ``[[data]]``; defaults = the paper's
Table 3 where it has a value)::

    [run]     out_dir, seed, device ("auto"), threads (0 = torch default), epochs | max_steps,
              batch_size (per device, 8), grad_accum (1), eval_every (500 optimiser steps),
              log_every (10), save_every (resume state; default = eval_every), keep_best (2),
              metric ("miou"), metric_mode ("max"), compile (false), amp ("auto" = bf16 on CUDA),
              num_workers (2), val_crops_per_image (4), max_val_items (64), eval_instances (true),
              cache_size (16 decoded images per worker), ddp_timeout_s (10800), sync_bn (false),
              find_unused_parameters (false), grad_clip (0 = off),
              state_file (<out_dir>/state.safetensors), validate (true)
    [model]   preset = "uperhover_resnet18" | config = "path/to/model.json"; any ModelConfig field
              as an override (name, backbone, head_hidden, taxonomy, mpp, tile_size, ...);
              init_weights = "full model .safetensors" (init_strict = true; init_rename =
              {"old key prefix" = "new key prefix"} applied to its keys first);
              backbone_weights = "auto" | PATH (UNI2-h via find_uni2h_checkpoint; never downloads)
    [optim]   lr (5e-5), weight_decay (1e-2), betas ([0.9, 0.999]), eps (1e-8),
              schedule ("linear" | "poly" | "constant"), warmup_steps (0), poly_power (1.0),
              min_lr (0.0)
    [loss]    name ("uperhover" | "ce" | "module:Factory"), other keys -> the loss's kwargs
              (uperhover: hv_weight 1.0, msge_weight 2.0)
    [augment] AugmentConfig fields (paper: colour jitter, HLS, flips, each p = 0.5)
    [postprocess]  HV-watershed overrides used by evaluation (PQ)
    [teacher] distillation from a frozen teacher (optional; ``train/teacher.py``,
              ``train/distill_loss.py``): model (a models.load_model spec: model .json /
              .safetensors path or a shipped name such as "accurate"), weight_sem (1.0),
              weight_hv (1.0), temperature (1.0), hv_mask ("teacher_fg" | "all"),
              fg_threshold (0.5), on_labelled (true: KD on labelled crops too, beside the
              ground-truth loss). With a teacher, unlabelled [[data]] (kind "images") are
              allowed: their crops get the KD loss only.
    [[data]]  name, kind (folder | pannuke | pseudo), path, mpp (override for all images),
              default_mpp (for images whose index.json has none), classes
              (true), class_map ({"dataset id" = model id}), split (index.json split filter),
              repeat ("auto" | int crops per image per epoch), use ("train" | "val" | "both"),
              val (list of sample names/stems held out for validation), val_fraction (0.0),
              exclude (list of names/stems), scales (tcga_ut), images_root (pseudo)

Relative paths are resolved against the current working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data.specs import DataSpec, data_specs_from_dicts, read_config_file  # noqa: F401  (re-exported: part of the config API)
from ..errors import InputError


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    eval_every: int = 500
    log_every: int = 10
    save_every: int | None = None
    keep_best: int = 2
    metric: str = "miou"
    metric_mode: str = "max"
    compile: bool = False
    amp: str = "auto"
    num_workers: int = 2
    val_crops_per_image: int = 4
    max_val_items: int = 64
    eval_instances: bool = True
    cache_size: int = 16
    ddp_timeout_s: int = 10800
    sync_bn: bool = False
    find_unused_parameters: bool = False
    grad_clip: float = 0.0
    progress: bool = True
    #: the ONE resumable state file of this run (replaced, never accumulated); default
    #: ``<out_dir>/state.safetensors``. Shipped runs use ``training/state/<run>.safetensors``.
    state_file: str | None = None
    #: evaluate the ``val`` images during training. False: ``val`` images are only held out
    #: (excluded from training, never scored by the trainer) and the last ``keep_best``
    #: checkpoints are kept, so no checkpoint can be picked by a held-out score.
    validate: bool = True


@dataclass
class OptimConfig:
    lr: float = 5e-5
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "linear"
    warmup_steps: int = 0
    poly_power: float = 1.0
    min_lr: float = 0.0


@dataclass
class TeacherConfig:
    """``[teacher]``: distil from a frozen model of the same contract, MPP and classes.

    model: a ``models.load_model`` spec (config .json / .safetensors path, or a shipped model name);
    its weights file's SHA-256 is recorded in the run's state (resuming with another teacher is
    refused; the path itself may change between machines). KD loss parameters: as
    ``distill_loss.KDOptions``. on_labelled: add the KD loss on labelled crops too (it is always
    the only loss of unlabelled crops)."""

    model: str
    weight_sem: float = 1.0
    weight_hv: float = 1.0
    temperature: float = 1.0
    hv_mask: str = "teacher_fg"
    fg_threshold: float = 0.5
    on_labelled: bool = True


@dataclass
class TrainConfig:
    run: RunConfig
    model: dict[str, Any]
    data: list[DataSpec]
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "uperhover"})
    augment: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    #: ``[teacher]`` (distillation) or None; absent from ``to_dict`` when None, so the plans of
    #: runs without a teacher are unchanged
    teacher: TeacherConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d.pop("source", None)
        if d.get("teacher") is None:
            d.pop("teacher", None)
        return d


def _build(cls, d: dict[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise InputError(f"config [{where}]: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise InputError(f"config [{where}]: {e}") from None


def train_config_from_dict(d: dict[str, Any], source: str | None = None) -> TrainConfig:
    d = dict(d)
    known = {"run", "model", "data", "optim", "loss", "augment", "postprocess", "teacher"}
    unknown = set(d) - known
    if unknown:
        raise InputError(f"config: unknown section(s) {sorted(unknown)}; known: {sorted(known)}")
    if "model" not in d or not isinstance(d["model"], dict):
        raise InputError("config: missing [model] section (preset = ... or config = ...)")
    specs = data_specs_from_dicts(d.get("data"))
    run = _build(RunConfig, dict(d.get("run", {})), "run")
    if run.metric_mode not in ("max", "min"):
        raise InputError("config [run]: metric_mode must be 'max' or 'min'")
    optim = _build(OptimConfig, dict(d.get("optim", {})), "optim")
    if optim.schedule not in ("linear", "poly", "constant"):
        raise InputError(f"config [optim]: schedule must be linear, poly or constant, got {optim.schedule!r}")
    loss = dict(d.get("loss", {"name": "uperhover"}))
    loss.setdefault("name", "uperhover")
    teacher = None
    if d.get("teacher") is not None:
        if not isinstance(d["teacher"], dict) or not d["teacher"].get("model"):
            raise InputError('config [teacher]: needs model = "<model .json / .safetensors or shipped name>"')
        teacher = _build(TeacherConfig, dict(d["teacher"]), "teacher")
    return TrainConfig(run=run, model=dict(d["model"]), data=specs, optim=optim, loss=loss,
                       augment=dict(d.get("augment", {})), postprocess=dict(d.get("postprocess", {})), source=source,
                       teacher=teacher)


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a run config; ``overrides`` like {"run.max_steps": 10} are applied on top."""
    d = read_config_file(path)
    for k, v in (overrides or {}).items():
        sec, _, key = k.partition(".")
        d.setdefault(sec, {})[key] = v
    return train_config_from_dict(d, source=str(path))
