"""Loaded models and their shared batchers: ``ModelRunner``, ``load_runners``, PAGET-H instance sources."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SegTMEError
from ..models.registry import LoadedModel
from .batcher import MicroBatcher
from .config import ServerConfig

log = logging.getLogger("segtme.server")


@dataclass
class ModelRunner:
    """One loaded model and its shared batcher.

    PAGET-H (panoptic PAGET) also needs a nucleus instance source: ``instance_runner`` is a
    second model (e.g. the shipped UperHoVer ``default``) with its own shared batcher — the same
    runner object when that model is also served — and ``instance_direct`` an instance source
    without a batched forward pass (the classical baseline), run in the job's thread.
    ``mitosis``: PAGET-H's mitosis marker (the CLI's, ``paget.runner.resolve_mitosis``), run per
    tile in the job's thread; None = none."""

    model: LoadedModel
    batcher: MicroBatcher
    instance_runner: "ModelRunner | None" = None
    instance_direct: Any = None
    mitosis: Any = None

    @property
    def cfg(self):
        return self.model.config

    @property
    def paget_mode(self) -> str | None:
        """"semantic" (PAGET-S) / "panoptic" (PAGET-H) for PAGET models, else None."""
        if self.model.contract.product != "paget":  # = paget.zoo.is_paget
            return None
        from ..paget.zoo import paget_mode

        return paget_mode(self.cfg)

    def batchers(self) -> list[MicroBatcher]:
        """This runner's batcher and its instance source's (no duplicates)."""
        out = [self.batcher]
        if self.instance_runner is not None and self.instance_runner.batcher is not self.batcher:
            out.append(self.instance_runner.batcher)
        return out


def make_runner(model: LoadedModel, max_batch: int, max_wait_ms: float, queue_size: int) -> ModelRunner:
    from ..inference.engine import forward_tiles

    def run(batch: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return forward_tiles(model, batch)

    b = MicroBatcher(run, max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0, max_queue=queue_size,
                     name=model.config.name)
    return ModelRunner(model, b)


def warmup(lm: LoadedModel) -> None:
    """One forward pass on a blank model tile (first-call costs: lazy kernels, allocator)."""
    from ..inference.engine import forward_tiles

    T = lm.config.tile_size
    forward_tiles(lm, [np.full((T, T, 3), 200, np.uint8)])


def warmup_in_background(lm: LoadedModel) -> threading.Thread:
    """``warmup`` in a daemon thread, so the server reports SERVING without waiting for it (the
    first job's first tile may run while it finishes; the results do not depend on it)."""
    def run() -> None:
        t0 = time.perf_counter()
        try:
            warmup(lm)
            log.info("model %s warmed up (%.2f s)", lm.config.name, time.perf_counter() - t0)
        except Exception as e:  # a warm-up failure is not fatal: the first job pays the cost instead
            log.warning("warm-up of %s failed: %s: %s", lm.config.name, type(e).__name__, e)

    th = threading.Thread(target=run, name=f"segtme-warmup-{lm.config.name}", daemon=True)
    th.start()
    return th


def attach_instance_sources(runners: dict[str, ModelRunner], aliases: dict[str, str], config: ServerConfig) -> None:
    """Give every PAGET-H runner its nucleus instance source (``cfg.extra["instance_source"]``,
    default ``"default"`` = the shipped UperHoVer; ``config.instance_source`` overrides).

    A source that is also served (by config name or by the spec given on the command line) shares
    that model's runner and batcher; another model spec is loaded once (shared by all PAGET-H
    runners naming it) with its own batcher; a model without a batched forward pass (the
    classical baseline, which also stands in for ``default`` when no default model is shipped)
    runs in each job's thread. A PAGET model with its own nucleus heads (``paget_uperhover``)
    gets no instance source unless ``config.instance_source`` names one."""
    from ..paget.heads import own_instances
    from ..paget.runner import _resolve_instance_source, resolve_mitosis

    extra: dict[str, ModelRunner] = {}
    for r in runners.values():
        if r.paget_mode == "panoptic" and r.mitosis is None:
            # the mitosis teacher the config names (as ``analyze_paget``'s mitosis="config")
            r.mitosis = resolve_mitosis(r.cfg, "config", "cpu" if r.model.device.type == "cpu" else str(r.model.device),
                                        r.model.precision)
            if r.mitosis is not None:
                log.info("PAGET-H %s: mitotic figures from %s", r.cfg.name, r.cfg.extra.get("mitosis"))
        if r.paget_mode != "panoptic" or r.instance_runner is not None or r.instance_direct is not None:
            continue
        if config.instance_source is None and own_instances(r.cfg):
            log.info("PAGET-H %s: instances from its own nucleus heads (one forward pass)", r.cfg.name)
            continue
        spec = str(config.instance_source or r.cfg.extra.get("instance_source", "default"))
        name = aliases.get(spec, spec)
        if name in runners:
            src_runner = runners[name]
        elif spec in extra:
            src_runner = extra[spec]
        else:
            lm = _resolve_instance_source(spec, config.device, config.allow_random)
            lm.precision = config.precision
            if lm.contract.instances == "hook":
                r.instance_direct = lm
                log.info("PAGET-H %s: instances from %s (%s), run per tile in the job thread", r.cfg.name,
                         lm.config.name, lm.source)
                continue
            src_runner = make_runner(lm, config.max_batch, config.max_wait_ms, config.queue_size)
            if config.warmup:
                warmup_in_background(lm)
            extra[spec] = src_runner
        if src_runner.paget_mode is not None:
            raise SegTMEError(f"PAGET-H model {r.cfg.name!r}: the instance source {spec!r} is itself a PAGET model")
        r.instance_runner = src_runner
        log.info("PAGET-H %s: instances from %s (%s) through its shared batcher", r.cfg.name, src_runner.cfg.name,
                 src_runner.model.source)


def load_runners(config: ServerConfig) -> tuple[dict[str, ModelRunner], dict[str, str]]:
    """Load each model once (by spec) and start its batcher; PAGET-H models get their instance
    source (``attach_instance_sources``). Returns (runners by config name, aliases spec -> name)."""
    from ..models.registry import load_model

    runners: dict[str, ModelRunner] = {}
    aliases: dict[str, str] = {}
    for spec in config.models:
        lm = load_model(spec, config.device, allow_random=config.allow_random, precision=config.precision)
        name = lm.config.name
        if name in runners:
            raise SegTMEError(f"two models named {name!r}; give each model a distinct name")
        runners[name] = make_runner(lm, config.max_batch, config.max_wait_ms, config.queue_size)
        if str(spec) != name:
            aliases[str(spec)] = name
        if config.warmup:
            warmup_in_background(lm)
        log.info("model %s loaded on %s (%s)", name, lm.device, lm.source)
    attach_instance_sources(runners, aliases, config)
    return runners, aliases

