"""The batch jobs on Ray: one slide per task, the model held in long-lived actors.

``run_ray`` starts an embedded local cluster (``ray.init()``) or joins one (``address``, e.g.
``auto`` on a cluster node or ``ray://head:10001``), creates ``workers`` actors (each reserving
``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs and loading the model once), and feeds them
the slides. Every task runs the same ``runner.process_job`` as the local executor, writing into
the same output folder (which must therefore be on a file system all nodes see), so outputs are
the same as a local run's. A task whose actor dies (OOM kill, node loss, ``ray.kill``) is
reported as failed with that reason and the actor is replaced; the slide's staging folder is
removed by the next run, which redoes only that slide.

Ray is optional (``pip install 'segtme[ray]'``); this module imports it only inside ``run_ray``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError
from .runner import Job, JobResult, Progress, is_complete, process_job
from .slide import SlideOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """address: None = start a local cluster; workers: actors (one model each);
    cpus_per_worker / gpus_per_worker: Ray resources per actor (torch threads = CPUs);
    weights: the weights file each actor loads a spec-string model with (device and precision:
    the job's ``SlideOptions.inference``)."""

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    weights: str | None = None
    object_store_mb: int = 256


class SlideWorker:
    """Ray actor body: loads the model once, then analyses slides (``process_job``)."""

    def __init__(self, model: Any, device: str, weights: str | None, precision: str, threads: int) -> None:
        import os

        import torch

        torch.set_num_threads(max(1, threads))
        if isinstance(model, str):
            from ..models.registry import load_model

            dev = "cuda" if device == "auto" and torch.cuda.is_available() else device
            model = load_model(model, dev, weights=weights, precision=precision)
        self.model = model
        self.pid = os.getpid()

    def ping(self) -> int:
        return self.pid

    def run(self, job: Job, out_root: str, opts: SlideOptions, force: bool) -> JobResult:
        return process_job(job, out_root, self.model, opts, force=force)


def run_ray(jobs: Sequence[Job], out_root: str | Path, model: Any, opts: SlideOptions, ropts: RayOptions = RayOptions(),
            *, force: bool = False, progress: Progress | None = None,
            on_result: Callable[[JobResult], None] | None = None,
            on_started: Callable[[list], None] | None = None) -> list[JobResult]:
    """Run ``jobs`` on Ray (see the module docstring); results in the order of ``jobs``.
    model: a spec string (loaded in each actor) or a ``LoadedModel`` (shipped to the actors).
    on_started(actors): called once the actors are up (tests use it to kill one)."""
    try:
        import ray
        from ray.exceptions import RayActorError, RayTaskError
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'segtme[ray]'") from None
    out_root = Path(out_root)
    results: dict[str, JobResult] = {}
    todo: deque[Job] = deque()
    for j in jobs:
        if not force and is_complete(out_root, j.name):
            results[j.name] = JobResult(j.name, j.path, "skipped", "complete")
            if progress is not None:
                progress.start(j.name)
                progress.finish(results[j.name])
            if on_result is not None:
                on_result(results[j.name])
        else:
            todo.append(j)
    if not todo:
        return [results[j.name] for j in jobs]
    started = False
    if not ray.is_initialized():
        try:
            if ropts.address:
                ray.init(address=ropts.address, log_to_driver=False)
            else:
                import os

                ray.init(num_cpus=max(1, int(round(ropts.workers * ropts.cpus_per_worker))),
                         num_gpus=int(ropts.gpus_per_worker * ropts.workers + 0.999) if ropts.gpus_per_worker else 0,
                         include_dashboard=False, log_to_driver=False,
                         object_store_memory=ropts.object_store_mb * 2**20,
                         runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(ropts.cpus_per_worker))),
                                                   "PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
        except Exception as e:
            raise InputError(f"cannot start/join Ray ({ropts.address or 'local'}): {e}") from None
        started = True
    try:
        Actor = ray.remote(num_cpus=ropts.cpus_per_worker, num_gpus=ropts.gpus_per_worker, max_restarts=0,
                           max_task_retries=0)(SlideWorker)
        mref = ray.put(model) if not isinstance(model, str) else model

        def new_actor():
            return Actor.remote(mref, opts.inference.device, ropts.weights, opts.inference.precision,
                                max(1, int(ropts.cpus_per_worker)))

        n = max(1, min(ropts.workers, len(todo)))
        actors = [new_actor() for _ in range(n)]
        try:
            ray.get([a.ping.remote() for a in actors])
        except RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            raise InputError(f"Ray workers could not load the model: {cause}") from None
        if on_started is not None:
            on_started(actors)
        idle = list(actors)
        inflight: dict = {}
        while todo or inflight:
            while todo and idle:
                a = idle.pop()
                j = todo.popleft()
                if progress is not None:
                    progress.start(j.name)
                inflight[a.run.remote(j, str(out_root), opts, force)] = (a, j)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                a, j = inflight.pop(ref)
                try:
                    r = ray.get(ref)
                except RayActorError as e:
                    r = JobResult(j.name, j.path, "failed", f"Ray worker died while analysing this slide ({type(e).__name__})")
                    a = new_actor()
                except RayTaskError as e:
                    r = JobResult(j.name, j.path, "failed", f"Ray task error: {getattr(e, 'cause', e)}")
                idle.append(a)
                results[j.name] = r
                if progress is not None:
                    progress.finish(r)
                if on_result is not None:
                    on_result(r)
        for a in idle:
            ray.kill(a)
    finally:
        if started:
            ray.shutdown()
    return [results[j.name] for j in jobs]
