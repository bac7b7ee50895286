"""The paper's three-stage progressive pseudo-label curriculum (section 5): ``segtme curriculum``.

1. stage 1 trains M1 on labelled data (``[stage1] data``);
2. M1 pseudo-labels the first unlabelled set (``[stage2] unlabelled``, e.g. TCGA-UT scale 0);
   stage 2 trains M2 **from fresh initialisation** on the accepted pseudo-labels;
3. M2 pseudo-labels the full set (``[stage3] unlabelled``, e.g. scales 0-5); stage 3 trains M3
   from fresh initialisation. M3 is the final model.

Layout under ``[curriculum] out_dir``: ``stage1/`` (a normal training run), ``pseudo2/``
(pseudo-labels by M1), ``stage2/``, ``pseudo3/`` (by M2), ``stage3/``. A stage is skipped when its
``DONE.json`` exists, a pseudo-label step when its ``manifest.json`` exists; an interrupted
training run resumes from its own ``resume/`` state. So rerunning the command continues.

Config (TOML/YAML)::

    [curriculum]
    out_dir = "runs/curriculum"
    tau_percentile = 70
    pseudo_batch_size = 16
    [base]            # a training config shared by every stage: run, model, optim, loss, augment, postprocess
    [stage1]          # data = [...] (labelled) + optional run/optim overrides
    [stage2]          # unlabelled = {kind = "tcga_ut", path = "...", scales = [0]} (or kind = "images", mpp = ...)
                      # val_fraction (0.05 of the pseudo-labels held out), data = [...] extra, run overrides
    [stage3]          # unlabelled = {kind = "tcga_ut", path = "...", scales = [0,1,2,3,4,5]}

Under torchrun every rank runs this; training is DDP, pseudo-labelling is one shard per rank.

Machine-scale options (this project's CPU runs; the paper's defaults are unchanged):

* ``[stage1] trained_model = "model.json"``: an already trained model is M1 (no stage-1 run);
* ``[stageK] init = "previous"``: stage K starts from the previous stage's checkpoint instead of
  a fresh initialisation (fine-tuning, not the paper's re-training);
* ``[curriculum] stages = 2``: stop after stage 2;
* ``[curriculum] state_dir = "training/state"``: each stage's ONE resumable state file is
  ``<state_dir>/<name>_<stage>.safetensors`` (``name`` = ``[curriculum] name``, default the
  out_dir's folder name), so it can be committed and continued on another machine.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..export.atomic import atomic_write_text
from .config import read_config_file, train_config_from_dict
from .pseudolabel import PseudoLabelConfig, parse_shard, run_pseudo_label

log = logging.getLogger(__name__)

STAGE_KEYS = {"data", "unlabelled", "val_fraction", "run", "optim", "loss", "augment", "model", "postprocess",
              "trained_model", "init"}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def stage_train_dict(cfg: dict[str, Any], stage: str, out_dir: Path, pseudo_dir: Path | None) -> dict[str, Any]:
    """The training-config dict of one stage: base + stage overrides + its data."""
    st = dict(cfg.get(stage, {}))
    unknown = set(st) - STAGE_KEYS
    if unknown:
        raise InputError(f"curriculum [{stage}]: unknown key(s) {sorted(unknown)}; known: {sorted(STAGE_KEYS)}")
    d = _merge(cfg.get("base", {}), {k: v for k, v in st.items() if k in ("run", "optim", "loss", "augment", "model", "postprocess")})
    data = list(st.get("data", []))
    if pseudo_dir is not None:
        data.insert(0, {"name": f"pseudo_{stage}", "kind": "pseudo", "path": str(pseudo_dir),
                        "val_fraction": float(st.get("val_fraction", 0.05))})
    if not data:
        raise InputError(f"curriculum [{stage}]: no training data")
    d["data"] = data
    d.setdefault("run", {})["out_dir"] = str(out_dir / "train")
    cur = cfg.get("curriculum", {})
    if cur.get("state_dir"):
        name = cur.get("name") or Path(cur.get("out_dir", "runs/curriculum")).name
        d["run"]["state_file"] = str(Path(cur["state_dir"]) / f"{name}_{stage}.safetensors")
    return d


def best_checkpoint(train_dir: Path) -> Path:
    """The best checkpoint JSON of a finished training run."""
    bj = train_dir / "checkpoints" / "best.json"
    if not bj.is_file():
        raise InputError(f"no best.json in {train_dir}/checkpoints (training did not finish?)")
    best = json.loads(bj.read_text())["best"]
    if not best:
        raise InputError(f"{bj}: no checkpoint recorded")
    return train_dir / "checkpoints" / best


def run_stage(cfg: dict[str, Any], stage: str, root: Path, pseudo_dir: Path | None, previous: Path | None = None) -> Path:
    """Train one stage unless its ``DONE.json`` exists (or ``trained_model`` names M1); returns
    its best checkpoint JSON. ``previous``: the previous stage's checkpoint (for ``init``)."""
    st = cfg.get(stage, {})
    if st.get("trained_model"):
        if stage != "stage1":
            raise InputError(f"curriculum [{stage}]: trained_model is only for stage1")
        m = Path(st["trained_model"])
        if not m.is_file():
            raise InputError(f"curriculum [stage1] trained_model {m}: no such file")
        return m
    sdir = root / stage
    done = sdir / "DONE.json"
    if done.is_file():
        return Path(json.loads(done.read_text())["best"])
    from .trainer import Trainer

    sdir.mkdir(parents=True, exist_ok=True)
    d = stage_train_dict(cfg, stage, sdir, pseudo_dir)
    init = st.get("init", "fresh")
    if init not in ("fresh", "previous"):
        raise InputError(f"curriculum [{stage}] init must be 'fresh' or 'previous', got {init!r}")
    if init == "previous":
        if previous is None:
            raise InputError(f"curriculum [{stage}] init = 'previous' needs a previous stage")
        from ..models.config import ModelConfig

        pc = ModelConfig.from_json(previous)
        w = Path(previous).parent / (pc.weights or (Path(previous).stem + ".safetensors"))
        d.setdefault("model", {})["init_weights"] = str(w)
    tcfg = train_config_from_dict(d, source=f"curriculum:{stage}")
    tr = Trainer(tcfg)  # fresh initialisation (paper) unless init = "previous"
    if tr.dist.is_main:
        atomic_write_text(sdir / "train_config.json", json.dumps(tcfg.to_dict(), indent=2, default=str))
    res = tr.fit()
    best = best_checkpoint(Path(tcfg.run.out_dir))
    if tr.dist.is_main:
        atomic_write_text(done, json.dumps({"stage": stage, "best": str(best), "step": res["step"], "checkpoints": res["best"]}, indent=2))
    _barrier()
    return best


def run_pseudo_step(cfg: dict[str, Any], stage: str, model_json: Path, root: Path) -> Path:
    """Pseudo-label ``[stage] unlabelled`` with ``model_json`` into ``root/pseudo<k>``."""
    pdir = root / f"pseudo{stage[-1]}"
    if (pdir / "manifest.json").is_file():
        return pdir
    un = dict(cfg.get(stage, {}).get("unlabelled") or {})
    if "path" not in un:
        raise InputError(f"curriculum [{stage}]: need unlabelled = {{kind = ..., path = ...}}")
    cur = cfg.get("curriculum", {})
    pcfg = PseudoLabelConfig(
        model=str(model_json), data=un["path"], out=str(pdir), kind=un.get("kind", "auto"), mpp=un.get("mpp"),
        scales=un.get("scales"), tau_percentile=float(cur.get("tau_percentile", 70.0)),
        batch_size=int(cur.get("pseudo_batch_size", 16)), device=str(cfg.get("base", {}).get("run", {}).get("device", "auto")),
    )
    run_pseudo_label(pcfg, shard=parse_shard(None), which="both")
    _barrier()
    return pdir


def run_curriculum(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the three stages; returns the checkpoints of M1, M2, M3."""
    unknown = set(cfg) - {"curriculum", "base", "stage1", "stage2", "stage3"}
    unknown_cur = set(cfg.get("curriculum", {})) - {"out_dir", "tau_percentile", "pseudo_batch_size", "stages", "state_dir", "name"}
    if unknown_cur:
        raise InputError(f"[curriculum]: unknown key(s) {sorted(unknown_cur)}")
    if unknown:
        raise InputError(f"curriculum config: unknown section(s) {sorted(unknown)}")
    cur = cfg.get("curriculum", {})
    root = Path(cur.get("out_dir", "runs/curriculum"))
    root.mkdir(parents=True, exist_ok=True)
    n_stages = int(cur.get("stages", 3))
    if n_stages not in (2, 3):
        raise InputError(f"[curriculum] stages must be 2 or 3, got {n_stages}")
    m1 = run_stage(cfg, "stage1", root, None)
    p2 = run_pseudo_step(cfg, "stage2", m1, root)
    m2 = run_stage(cfg, "stage2", root, p2, previous=m1)
    out = {"M1": str(m1), "M2": str(m2), "pseudo2": str(p2)}
    if n_stages == 3:
        p3 = run_pseudo_step(cfg, "stage3", m2, root)
        m3 = run_stage(cfg, "stage3", root, p3, previous=m2)
        out.update({"M3": str(m3), "pseudo3": str(p3)})
    if _is_main():
        atomic_write_text(root / "curriculum.json", json.dumps(out, indent=2))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return out


def run_curriculum_file(path: str | Path) -> dict[str, Any]:
    return run_curriculum(read_config_file(path))
