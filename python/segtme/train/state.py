"""The resumable state of one training run: ONE safetensors file, replaced (never accumulated).

Layout (no pickle): tensors ``model.<name>`` (weights + buffers), ``optim.state.<pid>.<key>``
(AdamW moments, step counters), ``rng.torch`` / ``rng.cuda.<i>`` (torch RNG states); the
metadata key ``segtme_state`` holds a JSON object with the step, the micro-batch counter (which
fixes the data order and the epoch position, since crops and augmentations are pure functions
of (seed, epoch, index)), the optimiser's param groups and non-tensor state, Python and NumPy
RNG states, the kept-checkpoint list, the metric rows and the run's config (its plan).

The file is written atomically (``export.atomic``): a kill at any moment leaves either the old
or the new state. The path is fixed per run (``[run] state_file``), e.g.
``training/state/<run>.safetensors`` in the repository, so that a session can commit it and
the next session, on a fresh machine, continues with ``segtme train CONFIG --resume``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError

META_KEY = "segtme_state"
FORMAT = "segtme-train-state/1"


@dataclass
class RunState:
    """What ``load_run_state`` returns: tensors split by owner plus the JSON part."""

    model: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    meta: dict[str, Any]


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors and JSON (no pickle)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if not key.startswith("state."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for pid, d in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def python_numpy_rng() -> dict[str, Any]:
    v, st, g = random.getstate()
    name, keys, pos, has_g, cached = np.random.get_state()
    return {"python": [v, list(st), g], "numpy": [name, keys.tolist(), int(pos), int(has_g), float(cached)]}


def restore_python_numpy_rng(d: dict[str, Any]) -> None:
    v, s, g = d["python"]
    random.setstate((v, tuple(s), g))
    name, keys, pos, has_g, cached = d["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), int(pos), int(has_g), float(cached)))


def save_run_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   meta: dict[str, Any]) -> Path:
    """Write the whole state atomically to ``path`` (replacing it). ``meta`` must be JSON-able;
    RNG states and the optimiser's JSON part are added here."""
    from safetensors.torch import save_file

    from ..export.atomic import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    otensors, ometa = optimizer_to_tensors(optimizer)
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"optim.{k}": v for k, v in otensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    full = dict(meta, format=FORMAT, optim_meta=ometa, rng_py_np=python_numpy_rng())
    with atomic_write(path) as tmp:
        save_file(flat, str(tmp), metadata={"format": "pt", META_KEY: json.dumps(full, default=float)})
    return path


def load_run_state(path: str | Path) -> RunState:
    """Read a state file written by ``save_run_state`` (clear error if it is not one)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no training state at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"{path}: not a readable training state ({e})") from None
    if META_KEY not in md:
        raise InputError(f"{path}: not a SegTME training state (no {META_KEY!r} metadata)")
    meta = json.loads(md[META_KEY])
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: unsupported training-state format {meta.get('format')!r} (expected {FORMAT})")
    split: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "rng": {}}
    for k, v in tensors.items():
        head, _, rest = k.partition(".")
        if head in split:
            split[head][rest] = v
    return RunState(split["model"], split["optim"], split["rng"], meta)


def peek_run_state(path: str | Path) -> dict[str, Any] | None:
    """The JSON part of a state file without reading its tensors (None if there is no file)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except Exception as e:
        raise InputError(f"{path}: not a readable training state ({e})") from None
    if META_KEY not in md:
        raise InputError(f"{path}: not a SegTME training state (no {META_KEY!r} metadata)")
    return json.loads(md[META_KEY])


#: ``[run]`` keys that may change between sessions without changing the run's plan or results
#: (machine-dependent knobs); everything else in the config is the plan and must not change
RESUME_FREE_RUN_KEYS = ("threads", "num_workers", "progress", "device", "cache_size", "ddp_timeout_s")


def plan_of(config: dict[str, Any]) -> dict[str, Any]:
    """The config without machine-dependent ``[run]`` knobs (compared on resume)."""
    d = json.loads(json.dumps(config, default=str))
    for k in RESUME_FREE_RUN_KEYS:
        d.get("run", {}).pop(k, None)
    d.get("model", {}).pop("init_weights", None)  # only read at a fresh start
    # a distillation teacher is identified by its weights' SHA-256 (checked by the trainer), not
    # by its path, which may differ between machines (a run's checkpoint, later a shipped name)
    (d.get("teacher") or {}).pop("model", None)
    return d


def plan_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``section.key`` names whose values differ between two plans."""
    out = []
    for sec in sorted(set(old) | set(new)):
        a, b = old.get(sec), new.get(sec)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{sec}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(sec)
    return out
