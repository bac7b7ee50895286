"""The trainer behind ``segtme train CONFIG`` (single process, or multi-GPU/multi-node via torchrun).

What one run does (paper section 6, Table 3 defaults; everything overridable in the config):

* data: ``[[data]]`` readers -> working-MPP crops of ``tile_size`` (``segtme.data``); training
  crops are random + augmented, validation crops are fixed grid positions;
* model: ``segtme.models`` preset / config + overrides, fresh init (optionally full-model
  ``init_weights`` or UNI2-h ``backbone_weights``); any registered family works, so a
  semantic-only student (``[loss] name = "ce"``) uses the same trainer;
* optimiser: AdamW (lr 5e-5, wd 1e-2), LR ``linear`` decay to 0 without warm-up, or
  ``poly`` with ``warmup_steps`` (PAGET: 6e-5, 1500 warm-up), per optimiser step;
* bf16 autocast on CUDA, optional ``torch.compile``, gradient accumulation;
* every ``eval_every`` steps: validation loss, mIoU, and PQ/AJI/Dice (HV watershed) on crops
  with instance labels; the best ``keep_best`` checkpoints by ``metric`` are kept as
  ``checkpoints/ckpt-stepNNNNNNN.safetensors`` + ``.json`` (``ModelConfig``, loadable with
  ``segtme.models.load_model(json)``); ``checkpoints/best.json`` lists them, best first;
* ``metrics.csv`` (one row per log/eval step) and a tqdm bar on rank 0;
* resume: ONE state file per run (``[run] state_file``, default ``<out_dir>/state.safetensors``;
  ``train/state.py``): weights, AdamW state, step, micro-batch counter (= data order and epoch
  position), RNG states, kept checkpoints, metric rows and the plan (config), written every
  ``save_every`` steps, at the end and on SIGTERM/SIGINT; ``segtme train CONFIG --resume``
  continues exactly where it stopped (crops and augmentations are pure functions of seed,
  epoch and index), refusing if the plan in the config changed.
* distillation (optional ``[teacher]``): a frozen teacher (``train/teacher.py``, loaded with
  ``models.load_model``) runs on the same augmented crops; the KD loss of
  ``train/distill_loss.py`` is added to the ground-truth loss on labelled crops and is the only
  loss of unlabelled crops (``train/distill_data.py``); the state records the teacher's
  weights SHA-256 and a resume with another teacher is refused.

Metrics (validation crops): ``miou`` = mean IoU over all classes incl. background (as HF
``evaluate``'s mean_iou) on class-labelled crops; if no validation crop has classes, it is the
binary background/nucleus mIoU. ``fg_iou`` = nucleus-vs-background IoU on all crops (pixels of
unknown class count as nucleus). ``pq``/``aji``/``dice`` = mean over crops with instance labels.

DDP: launched by torchrun (``WORLD_SIZE`` > 1): nccl on CUDA, gloo on CPU; ``EpochSampler``
shards the data; rank 0 evaluates, logs and writes files; the others wait at a barrier.
Gradients are averaged over ranks (each rank's loss is the mean over its own shard).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..data.dataset import CropDataset, EpochSampler
from ..data.specs import split_refs
from ..data.transforms import AugmentConfig
from ..errors import InputError
from ..export.atomic import atomic_write_text
from ..models.config import ModelConfig
from ..models.registry import load_state_dict_strict
from .checkpoints import save_safetensors, update_best
from .config import TrainConfig, load_train_config
from .distributed import DistInfo, init_distributed  # noqa: F401  (DistInfo re-exported)
from .losses import build_loss
from .modelinit import build_model_config, freeze_unused_parameters, init_model
from .signals import install_stop_handlers, worker_ignores_signals
from .state import (
    load_run_state,
    optimizer_from_tensors,
    peek_run_state,
    plan_differences,
    plan_of,
    restore_python_numpy_rng,
    save_run_state,
)
from .validation import EVAL_METRICS, collate, validate_crops

__all__ = ["Trainer", "train_from_config", "lr_factor", "collate", "split_refs", "save_safetensors",
           "build_model_config", "init_model", "freeze_unused_parameters", "EVAL_METRICS"]

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------- schedule
def lr_factor(step: int, total: int, schedule: str, warmup: int = 0, power: float = 1.0) -> float:
    """LR multiplier for optimiser step ``step`` (0-based) of ``total``.

    linear (paper): ``(T - t) / T`` after an optional linear warm-up; poly: ``(1 - t'/T')^power``
    after warm-up (t', T' counted from the end of warm-up); constant: 1 after warm-up."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t, T = step - warmup, max(1, total - warmup)
    frac = max(0.0, (T - t) / T)
    return frac if schedule == "linear" else frac ** power


# --------------------------------------------------------------------------- trainer
class Trainer:
    """One training run (see module doc). ``Trainer(cfg).fit()``; ``fit(stop_at_step=k)`` stops
    after step k as an interruption would (tests), leaving a resumable state."""

    def __init__(self, cfg: TrainConfig, *, model: nn.Module | None = None, model_config: ModelConfig | None = None,
                 resume: bool | None = None):
        """resume: None = continue the state file if there is one (curriculum, distill); True =
        it must exist (``--resume``); False = it must not (a fresh run never overwrites one)."""
        self.cfg = cfg
        rc = cfg.run
        if rc.threads > 0:
            torch.set_num_threads(rc.threads)
        if rc.metric not in EVAL_METRICS:
            raise InputError(f"[run] metric {rc.metric!r} unknown; choose one of {sorted(EVAL_METRICS)}")
        self.dist, self.device = init_distributed(rc.device, rc.ddp_timeout_s)
        self.out = Path(rc.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.state_path = Path(rc.state_file) if rc.state_file else self.out / "state.safetensors"
        saved = peek_run_state(self.state_path)
        if saved is not None and resume is False:
            raise InputError(f"a training state exists at {self.state_path} (step {saved.get('step')}/"
                             f"{saved.get('total_steps')}): pass --resume to continue it, or delete it to start over")
        if saved is None and resume is True:
            raise InputError(f"--resume: no training state at {self.state_path}")
        self._saved = saved
        if saved is not None:
            diff = plan_differences(saved.get("plan", {}), plan_of(cfg.to_dict()))
            if diff:
                raise InputError(f"{self.state_path}: the run's plan changed since its state was saved "
                                 f"({', '.join(diff)}); restore the config or start a new run")
        if self.dist.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(rc.seed)
        random.seed(rc.seed)
        np.random.seed(rc.seed % (2**32))

        self.model_cfg = model_config or build_model_config(cfg.model)
        if model is None:
            # resuming: the weights come from the state file, so init_weights is not read
            # (it may be gone or replaced on a fresh machine)
            msec = {k: v for k, v in cfg.model.items() if not (saved is not None and k == "init_weights")}
            model, self.init_source = init_model(self.model_cfg, msec)
        else:
            self.init_source = "given module"
        self.model = model.to(self.device)
        if self.dist.enabled and rc.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.loss_fn = build_loss(cfg.loss.get("name", "uperhover"), **{k: v for k, v in cfg.loss.items() if k != "name"})
        self.teacher = self._load_teacher(saved)

        # data
        train_refs, reps, val_refs = split_refs(cfg.data, rc.seed)
        if not train_refs:
            raise InputError("no training samples (check [[data]] paths, use/val settings)")
        mc = self.model_cfg
        aug = AugmentConfig(**cfg.augment) if cfg.augment else AugmentConfig()
        repeats = [r if r is not None else None for r in reps]
        auto = [r is None for r in repeats]
        if any(auto) and not all(auto):
            # mixed: compute the auto ones here (CropDataset takes one list)
            from ..data.dataset import ref_size
            from ..data.transforms import working_size

            repeats = [
                r if r is not None else max(1, round(np.prod(working_size(ref_size(ref), ref.mpp, mc.mpp)) / mc.tile_size**2))
                for r, ref in zip(repeats, train_refs)
            ]
        crop_ds = CropDataset
        if self.teacher is not None:  # unlabelled samples allowed: KD-only crops
            from .distill_data import DistillCropDataset as crop_ds
        self.train_ds = crop_ds(train_refs, mc.mpp, mc.tile_size, mean=mc.mean, std=mc.std, num_classes=mc.num_classes,
                                    train=True, repeats=None if all(auto) else repeats, augment_cfg=aug, seed=rc.seed,
                                    cache_size=rc.cache_size, with_hv="hv" in mc.heads)
        self.val_ds = None
        if val_refs and rc.validate:
            vds = CropDataset(val_refs, mc.mpp, mc.tile_size, mean=mc.mean, std=mc.std, num_classes=mc.num_classes,
                              train=False, crops_per_image=rc.val_crops_per_image, seed=rc.seed, cache_size=rc.cache_size,
                              with_hv="hv" in mc.heads)
            if len(vds.items) > rc.max_val_items:
                keep = np.linspace(0, len(vds.items) - 1, rc.max_val_items).round().astype(int)
                vds.items = [vds.items[i] for i in sorted(set(keep.tolist()))]
            self.val_ds = vds
        self.sampler = EpochSampler(len(self.train_ds), num_replicas=self.dist.world, rank=self.dist.rank, seed=rc.seed)
        per_rank = self.sampler.per_rank
        self.drop_last = per_rank >= rc.batch_size
        self.batches_per_epoch = per_rank // rc.batch_size if self.drop_last else 1
        if rc.max_steps:
            self.total_steps = int(rc.max_steps)
        else:
            epochs = rc.epochs if rc.epochs is not None else 1
            self.total_steps = max(1, math.ceil(epochs * self.batches_per_epoch / rc.grad_accum))

        # parameters the forward never uses (e.g. a ViT's final norm when only block taps are
        # read) are frozen: AdamW would skip them anyway, and DDP needs every trained
        # parameter to receive a gradient
        self.frozen_unused = freeze_unused_parameters(self.model, mc.tile_size, self.device)
        if self.frozen_unused and self.dist.is_main:
            log.info("parameters unused by the forward pass (frozen): %s", ", ".join(self.frozen_unused))

        # optimiser
        oc = cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay)
        self.amp_dtype = None
        if rc.amp == "bf16" or (rc.amp == "auto" and self.device.type == "cuda"):
            self.amp_dtype = torch.bfloat16

        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                 find_unused_parameters=rc.find_unused_parameters)
        self.fwd_model = torch.compile(self.ddp_model) if rc.compile else self.ddp_model

        # progress state
        self.step = 0  # optimiser steps done
        self.micro = 0  # micro-batches consumed
        self.best: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self._resume()

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def set_lr(self) -> float:
        oc = self.cfg.optim
        f = lr_factor(self.step, self.total_steps, oc.schedule, oc.warmup_steps, oc.poly_power)
        lr = oc.min_lr + (oc.lr - oc.min_lr) * f
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _loader_from(self, micro: int) -> Iterator[dict[str, torch.Tensor]]:
        """Endless micro-batch iterator starting at global micro-batch ``micro``."""
        rc = self.cfg.run
        while True:
            epoch, pos = divmod(micro, self.batches_per_epoch)
            self.sampler.set_epoch(epoch, start=pos * rc.batch_size)
            dl = DataLoader(self.train_ds, batch_size=rc.batch_size, sampler=self.sampler, drop_last=self.drop_last,
                            num_workers=rc.num_workers, collate_fn=collate, pin_memory=self.device.type == "cuda",
                            persistent_workers=False, worker_init_fn=worker_ignores_signals if rc.num_workers else None)
            n = 0
            for batch in dl:
                yield batch
                micro += 1
                n += 1
                if n >= self.batches_per_epoch - pos:
                    break
            if n == 0:
                raise InputError("training data loader produced no batch (dataset too small for batch_size?)")

    def _to_dev(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # ------------------------------------------------------------------ distillation
    def _load_teacher(self, saved: dict[str, Any] | None):
        """The frozen teacher of ``[teacher]`` (None without one); refuses a resume whose state
        recorded other teacher weights (``train/teacher.py``)."""
        if self.cfg.teacher is None:
            return None
        from .teacher import check_resume, kd_options, load_teacher

        teacher = load_teacher(self.cfg.teacher, self.model_cfg, self.device)
        check_resume(saved, teacher, self.state_path)
        self.kd_opts = kd_options(self.cfg.teacher)
        if self.dist.is_main:
            log.info("teacher %s (%s, sha256 %s)", self.cfg.teacher.model, teacher.config.name, teacher.sha256[:12])
        return teacher

    def _add_distillation(self, out: dict[str, torch.Tensor], mb: dict[str, torch.Tensor],
                          terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``terms`` plus the KD terms (``kd``, ``kd_sem``, ``kd_hv``); ``total`` += ``kd``. KD weight
        per crop: 1 on unlabelled crops, ``on_labelled`` (1/0) on labelled ones."""
        from .distill_loss import distill_terms

        t_out = self.teacher(mb["image"], self.autocast)
        labelled = mb["labelled"].float() if "labelled" in mb else torch.ones(mb["image"].shape[0], device=self.device)
        w = 1.0 - labelled * (0.0 if self.cfg.teacher.on_labelled else 1.0)
        try:
            kd = distill_terms(out, t_out, self.kd_opts, w)
        except ValueError as e:
            raise InputError(f"[teacher] {e}") from None
        return dict(terms, total=terms["total"] + kd["kd"], **kd)

    # ------------------------------------------------------------------ train
    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; returns mean loss terms."""
        self.ddp_model.train()
        lr = self.set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        k = len(micro_batches)
        for i, mb in enumerate(micro_batches):
            mb = self._to_dev(mb)
            sync = (i == k - 1) or not self.dist.enabled
            ctx = nullcontext() if sync else self.ddp_model.no_sync()  # type: ignore[attr-defined]
            with ctx:
                with self.autocast():
                    out = self.fwd_model(mb["image"])
                terms = self.loss_fn(out, mb)
                if self.teacher is not None:
                    terms = self._add_distillation(out, mb, terms)
                (terms["total"] / k).backward()
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach()) / k
        if self.cfg.run.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.run.grad_clip)
        self.optimizer.step()
        self.step += 1
        sums["lr"] = lr
        return sums

    def fit(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Train until ``total_steps`` (or ``stop_at_step``); returns a summary dict."""
        rc = self.cfg.run
        save_every = rc.save_every or rc.eval_every
        it = self._loader_from(self.micro)
        bar = None
        if self.dist.is_main and rc.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.model_cfg.name}", dynamic_ncols=True)
        run_terms: dict[str, float] = {}
        n_run = 0
        t0 = time.time()
        self.interrupted = None
        if self.step >= self.total_steps:
            self._restore_final_checkpoint()
        restore = install_stop_handlers(self)
        try:
            self._fit_loop(it, bar, stop_at_step, save_every, run_terms, n_run, t0)
        finally:
            restore()
        if bar is not None:
            bar.close()
        return {"step": self.step, "total_steps": self.total_steps, "best": list(self.best), "out_dir": str(self.out),
                "state_file": str(self.state_path), "interrupted": self.interrupted}

    def _restore_final_checkpoint(self) -> None:
        """A finished run resumed on a fresh machine (only its state file was kept): write the
        last step's checkpoint again from the state, so ``--resume`` of a finished run yields
        its model (``runs/`` is not committed; the state file is)."""
        if not self.dist.is_main:
            return
        stem = f"ckpt-step{self.step:07d}"
        if (self.ckpt_dir / f"{stem}.json").is_file():
            return
        self.best = [e for e in self.best if e["step"] != self.step]
        if self.val_ds is None:
            self._checkpoint({})
        else:
            self.save_model(self.ckpt_dir, stem)
            log.info("re-exported the final checkpoint %s from %s", stem, self.state_path)

    def request_stop(self, why: str = "signal") -> None:
        """Stop after the current optimiser step, saving the state first (SIGTERM/SIGINT)."""
        self.interrupted = why

    def _fit_loop(self, it, bar, stop_at_step, save_every, run_terms, n_run, t0) -> None:
        rc = self.cfg.run
        while self.step < self.total_steps:
            mbs = [next(it) for _ in range(rc.grad_accum)]
            self.micro += rc.grad_accum
            terms = self.train_step(mbs)
            for k, v in terms.items():
                run_terms[k] = run_terms.get(k, 0.0) + v
            n_run += 1
            last = self.step >= self.total_steps
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total']:.4f}", lr=f"{terms['lr']:.2e}")
            row: dict[str, Any] | None = None
            if self.step % rc.log_every == 0 or last:
                row = {"step": self.step, "epoch": round(self.micro / self.batches_per_epoch, 4),
                       "time_s": round(time.time() - t0, 2)}
                row.update({("lr" if k == "lr" else f"loss_{k}" if k != "total" else "loss"): v / n_run for k, v in run_terms.items()})
                run_terms, n_run = {}, 0
            do_eval = self.step % rc.eval_every == 0 or last
            if do_eval:
                metrics = self.evaluate() if self.dist.is_main else {}
                row = row or {"step": self.step, "epoch": round(self.micro / self.batches_per_epoch, 4)}
                row.update(metrics)
                if self.dist.is_main:
                    self._checkpoint(metrics)
            if row is not None and self.dist.is_main:
                self._log_row(row)
            stop = (stop_at_step is not None and self.step >= stop_at_step) or self.interrupted is not None
            if do_eval or self.step % save_every == 0 or last or stop:
                self._save_resume()
            if stop:
                if self.interrupted is not None:
                    log.warning("stopped (%s) after step %d/%d; state saved to %s", self.interrupted, self.step,
                                self.total_steps, self.state_path)
                break

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict[str, float]:
        """Validation metrics on the fixed validation crops (rank 0). Empty dict without val data
        (``train/validation.py``)."""
        if self.val_ds is None or len(self.val_ds) == 0:
            return {}
        post = dict(self.model_cfg.postprocess)
        post.update(self.cfg.postprocess)
        return validate_crops(self.model, self.val_ds, self.loss_fn, num_classes=self.model_cfg.num_classes,
                              batch_size=self.cfg.run.batch_size, postprocess=post, device=self.device,
                              autocast=self.autocast, eval_instances=self.cfg.run.eval_instances)

    # ------------------------------------------------------------------ files
    def _log_row(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if int(r["step"]) != int(row["step"])] + [row]
        from ..export.tables import rows_to_csv

        atomic_write_text(self.out / "metrics.csv", rows_to_csv(self.rows))
        if not self.cfg.run.progress:
            log.info("step %s: %s", row["step"], {k: v for k, v in row.items() if k != "step"})

    def checkpoint_config(self, stem: str) -> ModelConfig:
        return self.model_cfg.replace(weights=f"{stem}.safetensors", backbone_weights=None)

    def save_model(self, directory: Path, stem: str) -> Path:
        """``<stem>.safetensors`` + ``<stem>.json`` (ModelConfig); returns the JSON path."""
        save_safetensors(self.model.state_dict(), directory / f"{stem}.safetensors",
                         metadata={"format": "pt", "segtme_step": str(self.step)})
        p = directory / f"{stem}.json"
        self.checkpoint_config(stem).to_json(p)
        return p

    def _checkpoint(self, metrics: dict[str, float]) -> None:
        rc = self.cfg.run
        if metrics and rc.metric not in metrics:
            raise InputError(f"[run] metric {rc.metric!r} not among evaluation metrics {sorted(metrics)}")
        value = float(metrics[rc.metric]) if metrics else float(self.step)
        keep, drop, save_now = update_best(self.best, self.step, value, rc.metric if metrics else "step",
                                           rc.metric_mode if metrics else "max", rc.keep_best)
        if save_now:
            stem = f"ckpt-step{self.step:07d}"
            self.save_model(self.ckpt_dir, stem)
            keep = [dict(e, json=f"{stem}.json") if e["step"] == self.step else e for e in keep]
        for e in drop:
            for suf in (".json", ".safetensors"):
                (self.ckpt_dir / (e["json"][:-5] + suf)).unlink(missing_ok=True)
        self.best = keep
        atomic_write_text(self.ckpt_dir / "best.json", json.dumps(
            {"metric": rc.metric, "mode": rc.metric_mode, "best": self.best[0]["json"] if self.best else None,
             "checkpoints": self.best}, indent=2))

    def _save_resume(self) -> None:
        if not self.dist.is_main:
            if self.dist.enabled:
                dist.barrier()
            return
        meta = {
            "step": self.step,
            "micro": self.micro,
            "total_steps": self.total_steps,
            "best": self.best,
            "rows": self.rows,
            "plan": plan_of(self.cfg.to_dict()),
            "config": self.cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "init_source": self.init_source,
        }
        if self.teacher is not None:
            meta["teacher"] = self.teacher.state_meta()
        save_run_state(self.state_path, self.model, self.optimizer, meta)
        if self.dist.enabled:
            dist.barrier()

    def _resume(self) -> None:
        if self._saved is None:
            return
        st = load_run_state(self.state_path)
        if st.meta.get("total_steps") != self.total_steps:
            raise InputError(f"{self.state_path}: total steps {st.meta.get('total_steps')} in the state, "
                             f"{self.total_steps} now (the run's plan must not change)")
        load_state_dict_strict(self.model, st.model, str(self.state_path))
        optimizer_from_tensors(self.optimizer, st.optim, st.meta["optim_meta"])
        torch.set_rng_state(st.rng["torch"])
        if torch.cuda.is_available():
            cs = [st.rng[k] for k in sorted(k for k in st.rng if k.startswith("cuda."))]
            if cs:
                torch.cuda.set_rng_state_all(cs)
        restore_python_numpy_rng(st.meta["rng_py_np"])
        self.step, self.micro = int(st.meta["step"]), int(st.meta["micro"])
        self.best, self.rows = st.meta["best"], st.meta.get("rows", [])
        self.init_source = st.meta.get("init_source", self.init_source)
        log.info("resumed from %s at step %d/%d", self.state_path, self.step, self.total_steps)

    def close(self) -> None:
        if self.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()


def train_from_config(path: str | Path, overrides: dict[str, Any] | None = None, resume: bool | None = None) -> dict[str, Any]:
    """``segtme train CONFIG [--resume]``: load the config, train, return a summary (``resume``
    as ``Trainer``)."""
    cfg = load_train_config(path, overrides)
    tr = Trainer(cfg, resume=resume)
    try:
        if tr.dist.is_main:
            atomic_write_text(tr.out / "train_config.json", json.dumps(cfg.to_dict(), indent=2, default=str))
        return tr.fit()
    finally:
        tr.close()
