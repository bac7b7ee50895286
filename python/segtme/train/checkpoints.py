"""Model checkpoints of a run (``checkpoints/ckpt-stepNNNNNNN.{safetensors,json}``): atomic
safetensors writes and the keep-best bookkeeping (a pure function)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..export.atomic import atomic_write


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_write(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def update_best(best: list[dict[str, Any]], step: int, value: float, metric: str, mode: str,
                keep_best: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Add ``(step, value)`` to the kept list ``best``. Returns (kept entries, best first; entries
    to delete (they carry ``json``); whether ``step`` is kept and so must be saved now). NaN
    values rank last; ties go to the later step."""
    if math.isnan(value):
        value = -math.inf if mode == "max" else math.inf
    sign = 1.0 if mode == "max" else -1.0
    cand = list(best) + [{"step": step, "metric": metric, "value": value}]
    cand.sort(key=lambda e: (-sign * e["value"], -e["step"]))
    keep = cand[:keep_best]
    drop = [e for e in cand if e not in keep and "json" in e]
    return keep, drop, any(e["step"] == step for e in keep)
