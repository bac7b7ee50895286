"""The frozen teacher of a distillation run (``[teacher]`` of a training config).

The teacher is loaded through the product's one model loader (``models.load_model``) with its
weights file given explicitly, so it is the plain torch module (never the compiled / ONNX
inference graph of a shipped model); it stays in eval mode with ``requires_grad = False`` and
runs under ``torch.no_grad``. It is not part of the run's state: the state records the SHA-256
of its weights file, and a resume with a different teacher is refused.

Teacher and student must share the working MPP (µm/px), the classes (taxonomy) and the output
grid (every head at the input size, in working px), so both see the very same crops after
augmentation; anything else is a one-line ``InputError`` at start-up.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import InputError
from ..hashing import file_sha256
from ..models.config import ModelConfig, ModelConfigError
from ..models.registry import WeightsError, contract, load_model, resolve_config
from .config import TeacherConfig
from .distill_loss import KDOptions


def kd_options(tc: TeacherConfig) -> KDOptions:
    """The loss options of a ``[teacher]`` section (one-line InputError for bad values)."""
    try:
        return KDOptions(weight_sem=float(tc.weight_sem), weight_hv=float(tc.weight_hv),
                         temperature=float(tc.temperature), hv_mask=str(tc.hv_mask),
                         fg_threshold=float(tc.fg_threshold))
    except ValueError as e:
        raise InputError(str(e)) from None


def check_compatible(teacher: ModelConfig, student: ModelConfig, *, need_hv: bool) -> None:
    """One-line InputError unless teacher and student share working MPP, classes and a dense
    ``sem`` (and, when ``need_hv``, ``hv``) output on the input grid."""
    if abs(float(teacher.mpp) - float(student.mpp)) > 1e-9:
        raise InputError(f"[teacher] {teacher.name!r} works at {teacher.mpp} µm/px, the student at {student.mpp} µm/px: "
                         "teacher and student must share the working MPP (same crops, same output grid)")
    tc, sc = contract(teacher), contract(student)
    if not tc.dense or "sem" not in tc.outputs:
        raise InputError(f"[teacher] {teacher.name!r} has no dense 'sem' output (outputs {list(tc.outputs)}); "
                         "a distillation teacher must be a nucleus model with per-pixel maps")
    if "sem" not in sc.outputs:
        raise InputError(f"[teacher] the student {student.name!r} has no 'sem' output to distil into")
    if teacher.num_classes != student.num_classes or teacher.taxonomy != student.taxonomy:
        raise InputError(f"[teacher] {teacher.name!r} predicts {teacher.num_classes} classes ({teacher.taxonomy}), "
                         f"the student {student.num_classes} ({student.taxonomy}): the taxonomies must match")
    if need_hv and not (tc.has_hv and sc.has_hv):
        raise InputError(f"[teacher] weight_hv > 0 needs an 'hv' head on both teacher ({list(tc.outputs)}) "
                         f"and student ({list(sc.outputs)}); set weight_hv = 0")


@dataclass
class Teacher:
    """A loaded, frozen teacher. ``__call__(x)`` takes the student's normalised crops
    (B, 3, T, T) and returns the teacher's outputs on the same grid (no grad)."""

    module: nn.Module
    config: ModelConfig
    weights: Path
    sha256: str
    spec: str
    student_mean: tuple[float, ...]
    student_std: tuple[float, ...]

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Re-normalise the student's input (``(rgb/255 − mean_s)/std_s``) to the teacher's
        mean/std (identity when they are equal)."""
        ms, ss = self.student_mean, self.student_std
        mt, st = tuple(self.config.mean), tuple(self.config.std)
        if ms == mt and ss == st:
            return x
        def col(v):
            return torch.tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x * col(ss) + col(ms) - col(mt)) / col(st)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, autocast: Callable[[], Any] = nullcontext) -> dict[str, torch.Tensor]:
        self.module.eval()
        with autocast():
            out = self.module(self.to_input(x))
        return {k: v.float() for k, v in out.items()}

    def state_meta(self) -> dict[str, Any]:
        """What the run's state records about the teacher (JSON)."""
        return {"sha256": self.sha256, "spec": self.spec, "weights": str(self.weights), "name": self.config.name,
                "mpp": float(self.config.mpp)}


def load_teacher(tc: TeacherConfig, student: ModelConfig, device: torch.device) -> Teacher:
    """Load ``tc.model`` with the product's loader, check it against the student, freeze it and
    check its output grid on one zero tile. One-line InputError on any mismatch."""
    try:
        cfg, wpath = resolve_config(str(tc.model))
    except ModelConfigError as e:
        raise InputError(f"[teacher] model: {e}") from None
    if wpath is None or not Path(wpath).is_file():
        raise InputError(f"[teacher] model {tc.model!r}: weights file {wpath} not found (the teacher must be trained)")
    opts = kd_options(tc)
    check_compatible(cfg, student, need_hv=opts.weight_hv > 0)
    # the teacher's construction must not move the student's random stream
    with torch.random.fork_rng(devices=[]):
        try:
            lm = load_model(str(tc.model), device, weights=wpath)  # explicit weights: the plain torch module
        except (ModelConfigError, WeightsError) as e:
            raise InputError(f"[teacher] {e}") from None
    module = lm.module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    t = Teacher(module=module, config=lm.config, weights=Path(wpath), sha256=file_sha256(wpath), spec=str(tc.model),
                student_mean=tuple(student.mean), student_std=tuple(student.std))
    T = int(student.tile_size)
    out = t(torch.zeros(1, 3, T, T, device=device))
    want = {"sem": student.num_classes, **({"hv": 2} if opts.weight_hv > 0 else {})}
    for k, n in want.items():
        if k not in out or tuple(out[k].shape) != (1, n, T, T):
            got = tuple(out[k].shape) if k in out else None
            raise InputError(f"[teacher] output {k!r} on a {T} px tile has shape {got}, expected {(1, n, T, T)}: "
                             "teacher and student must share the output grid")
    return t


def check_resume(saved: dict[str, Any] | None, teacher: Teacher | None, state_path: Path) -> None:
    """Refuse (one-line InputError) to resume a state whose recorded teacher differs."""
    if saved is None:
        return
    old = (saved.get("teacher") or {}).get("sha256")
    new = teacher.sha256 if teacher is not None else None
    if old != new:
        raise InputError(f"{state_path}: the run was distilled from teacher weights sha256 {old}, now {new} "
                         f"({teacher.weights if teacher is not None else 'no teacher'}); resume with the same teacher")
