#!/usr/bin/env python
"""Server throughput and fairness: tiles/s and megapixels/s for 1, 4 and 8 concurrent DetectTME
clients, with the shared batcher on (``--max-batch``) and off (max batch 1), in one run; the
slowest / fastest job of each concurrent run; and ``segtme serve`` start -> health SERVING.

    .venv/bin/python scripts/bench_server.py                      # writes docs/bench_server.md
    .venv/bin/python scripts/bench_server.py --model uperhover_resnet18 --tiles-per-client 8 --out /tmp/b.md

Each client streams ``--tiles-per-client`` tiles of the streaming plan over a real MoNuSeg image
(PNG, encoded before the clock starts) as one DetectTME job and waits for its TME report. For
N clients the same N jobs are run twice: **concurrently** (N client threads at once) and
**sequentially** (one client after another); issue #16's CPU targets: concurrent / sequential
>= 0.95 for 4 clients, and in a concurrent run no job takes more than 1.5x another (all jobs have
the same number of tiles). The server runs in this process on loopback (clients do minimal work:
they count messages, they do not parse the GeoJSON).

Model: ``--model`` (default: the shipped ``default`` model if present, else the
``uperhover_resnet18`` preset with random weights — the compute of a real CNN; its nuclei are
meaningless, which does not matter for throughput). Timings depend on the machine and on what
else runs on it: the table records the CPU count and the load average before and after.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))


@dataclass
class Row:
    batching: str
    max_batch: int
    clients: int
    mode: str
    tiles: int
    seconds: float
    all_seconds: list
    mpix_sent: float
    mpix_full: float
    mean_batch: float
    #: concurrent mode: slowest / fastest job's completion time (equal jobs started together)
    fairness: float = float("nan")

    @property
    def tiles_s(self) -> float:
        return self.tiles / self.seconds

    @property
    def mpix_s(self) -> float:
        return self.mpix_sent / self.seconds

    @property
    def mpix_full_s(self) -> float:
        return self.mpix_full / self.seconds


def data_dir() -> Path:
    return Path(os.environ.get("SEGTME_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


def load_images(n: int):
    import json

    import numpy as np
    from PIL import Image

    root = data_dir() / "monuseg-train"
    if not root.is_dir():
        raise SystemExit(f"MoNuSeg data not found at {root} (set SEGTME_DATA_DIR)")
    index = json.loads((root / "index.json").read_text())
    items = index["items"] if isinstance(index, dict) and "items" in index else index
    out = []
    for it in items[:n]:
        out.append((np.asarray(Image.open(root / it["image"]).convert("RGB")), float(it.get("mpp") or 0.25)))
    return out


def make_jobs(n_clients: int, tiles_per_client: int, cfg, images):
    """One job per client of ``tiles_per_client`` distinct tiles: the stream plan's tiles over
    whole MoNuSeg images (one 512 px tile each at the default model's 0.5 µm/px), client c
    starting at image 3c. Each tile gets its own index and its own place on a virtual slide
    (tile k shifted by k * 100000 px), since the server refuses repeated indices and overlapping
    cores."""
    from PIL import Image

    from segtme.resample import resample
    from segtme.inference.tiling import plan_stream_tiles
    from segtme.server._proto.segtme.v1 import segtme_pb2 as pb

    pool = []
    for rgb, mpp in images:
        H, W = rgb.shape[:2]
        for t in plan_stream_tiles((0, 0, W, H), (W, H), mpp, cfg.mpp, cfg.tile_size, cfg.tile_overlap):
            rx, ry, rw, rh = t.region
            small = resample(rgb[ry:ry + rh, rx:rx + rw], 1.0 / t.d)
            buf = io.BytesIO()
            Image.fromarray(small).save(buf, "PNG")
            pool.append((mpp, t, small.shape, buf.getvalue()))
    jobs = []
    for c in range(n_clients):
        mpp = pool[(3 * c) % len(pool)][0]
        msgs = [pb.DetectRequest(config=pb.JobConfig(image_mpp=mpp, job_id=f"bench-{c}",
                                                     expected_tiles=tiles_per_client))]
        sent = full = 0.0
        for k in range(tiles_per_client):
            _m, t, shape, png = pool[(k + 3 * c) % len(pool)]
            rx, ry, rw, rh = t.region
            x0, y0, x1, y1 = t.core
            dx = 100_000 * k
            msgs.append(pb.DetectRequest(tile=pb.Tile(
                index=k, x=rx + dx, y=ry, downsample=t.d, width=shape[1], height=shape[0],
                core=pb.Rect(x=x0 + dx, y=y0, width=x1 - x0, height=y1 - y0), encoding=pb.PNG, pixels=png)))
            sent += shape[0] * shape[1] / 1e6
            full += rw * rh / 1e6
        msgs.append(pb.DetectRequest(end=pb.End()))
        jobs.append((msgs, sent, full))
    return jobs


def run_client(stub, msgs) -> int:
    n = 0
    last = None
    for r in stub.DetectTME(iter(msgs), timeout=3600):
        last = r.WhichOneof("msg")
        n += 1
    if last != "report":
        raise RuntimeError("job did not end with a report")
    return n


def measure(stub, runner, jobs, concurrent: bool) -> tuple[float, float, list[float]]:
    """(wall seconds, mean batch, each job's seconds from the start of the measurement)."""
    b0, i0 = runner.batcher.stats.batches, runner.batcher.stats.items
    t0 = time.perf_counter()
    per_job = [0.0] * len(jobs)

    def go(k, m):
        run_client(stub, m)
        per_job[k] = time.perf_counter() - t0

    if concurrent:
        errs: list[BaseException] = []

        def guarded(k, m):
            try:
                go(k, m)
            except BaseException as e:  # noqa: BLE001
                errs.append(e)

        th = [threading.Thread(target=guarded, args=(k, m)) for k, (m, _, _) in enumerate(jobs)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        if errs:
            raise errs[0]
    else:
        for k, (m, _, _) in enumerate(jobs):
            t_job = time.perf_counter()
            go(k, m)
            per_job[k] = time.perf_counter() - t_job
    dt = time.perf_counter() - t0
    nb, ni = runner.batcher.stats.batches - b0, runner.batcher.stats.items - i0
    return dt, (ni / nb if nb else 0.0), per_job


def time_to_serving(model: str, device: str, repeats: int) -> list[float]:
    """Seconds from starting ``segtme serve`` (a new process) until its health service answers
    SERVING, ``repeats`` times; the server is then stopped (SIGTERM). Also prints the server's
    CPU seconds (user + system) at that moment: on a busy machine the wall time mostly measures
    the wait for a core, the CPU time what start-up itself costs."""
    import signal
    import subprocess

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    out = []
    for _ in range(repeats):
        with socket_free_port() as port:
            pass
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "segtme.cli", "serve", "--port", str(port), "--model", model,
                                 "--device", device], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        try:
            ch = grpc.insecure_channel(f"127.0.0.1:{port}")
            hs = health_pb2_grpc.HealthStub(ch)
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"segtme serve exited with {proc.returncode}")
                try:
                    if hs.Check(health_pb2.HealthCheckRequest(), timeout=0.2).status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    time.sleep(0.02)
            out.append(time.perf_counter() - t0)
            f = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
            print(f"segtme serve: SERVING after {out[-1]:.2f} s wall, {cpu:.2f} s CPU (user+system)", flush=True)
            ch.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return out


class socket_free_port:
    """A free loopback TCP port (bound then released)."""

    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model spec (default: shipped 'default', else uperhover_resnet18 random)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-batch", type=int, default=8, help="batch size when batching is on")
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--tiles-per-client", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2,
                    help="run each cell this many times (sequential and concurrent interleaved); the table shows the "
                         "fastest run (least disturbed by other load) and the spread")
    ap.add_argument("--batching", default="on,off", help="which of on (--max-batch) / off (max batch 1) to run")
    ap.add_argument("--serving-repeats", type=int, default=3,
                    help="times `segtme serve` is started to measure start -> health SERVING (0 = skip)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench_server.md")
    args = ap.parse_args(argv)

    import grpc
    import torch

    from segtme.export.atomic import atomic_write
    from segtme.models.registry import load_model, shipped_models
    from segtme.server._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc
    from segtme.server.limits import ServerLimits
    from segtme.server.service import ServerConfig, build_server, make_runner

    spec = args.model or ("default" if "default" in shipped_models() else "uperhover_resnet18")
    lm = load_model(spec, args.device, allow_random=True)
    cfg = lm.config
    clients = [int(c) for c in args.clients.split(",")]
    images = load_images(max(max(clients) * 3, args.tiles_per_client + 3 * max(clients)))
    load0 = os.getloadavg()
    rows: list[Row] = []
    modes_b = [b.strip() for b in args.batching.split(",")]
    serving = time_to_serving(spec, "cpu" if args.device == "auto" else args.device, args.serving_repeats) \
        if args.serving_repeats > 0 else []
    if serving:
        print("start -> SERVING (s):", ", ".join(f"{t:.2f}" for t in serving), flush=True)
    for label, mb in [(b, args.max_batch if b == "on" else 1) for b in ("on", "off") if b in modes_b]:
        runner = make_runner(lm, mb, args.max_wait_ms if mb > 1 else 0.0, queue_size=64)
        srv = build_server(ServerConfig(port=0, max_batch=mb, limits=ServerLimits(max_concurrent_streams=max(16, max(clients)))),
                           runners={cfg.name: runner})
        ch = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        stub = pb_grpc.SegTMEStub(ch)
        warm = make_jobs(1, 2, cfg, images)
        run_client(stub, warm[0][0])  # warm-up (not timed)
        for n in clients:
            jobs = make_jobs(n, args.tiles_per_client, cfg, images)
            tiles = n * args.tiles_per_client
            sent = sum(j[1] for j in jobs)
            full = sum(j[2] for j in jobs)
            modes = ("concurrent",) if n == 1 else ("sequential", "concurrent")
            times: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
            for _rep in range(max(1, args.repeats)):
                for mode in modes:  # interleaved, so slow phases of the machine hit both modes
                    dt, meanb, per_job = measure(stub, runner, jobs, mode == "concurrent")
                    fair = max(per_job) / min(per_job) if mode == "concurrent" and min(per_job) > 0 else float("nan")
                    times[mode].append((dt, meanb, fair))
                    print(f"batching {label:3s} clients {n} {mode:10s}: {tiles / dt:6.2f} tiles/s  mean batch {meanb:.2f}"
                          f"  ({dt:.1f} s; jobs {', '.join(f'{t:.1f}' for t in per_job)} s)", flush=True)
            for mode in modes:
                best = min(times[mode])
                rows.append(Row(label, mb, n, mode, tiles, best[0], [t for t, _, _ in times[mode]], sent, full, best[1],
                                max(f for _, _, f in times[mode])))
        ch.close()
        srv.stop(1)
        runner.batcher.close()
    load1 = os.getloadavg()

    def find(b, n, mode):
        return next((r for r in rows if r.batching == b and r.clients == n and r.mode == mode), None)

    lines = [
        "# Server throughput (`scripts/bench_server.py`)",
        "",
        "Command: `" + " ".join([".venv/bin/python scripts/bench_server.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
        "",
        f"- model: `{cfg.name}` ({lm.source}), tile {cfg.tile_size} px at {cfg.mpp} µm/px, overlap {cfg.tile_overlap}; "
        f"device {lm.device}; torch threads {torch.get_num_threads()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}; "
        f"load average before {load0[0]:.1f} / after {load1[0]:.1f} (1 min) — **the machine was shared with other "
        "jobs, so absolute numbers are noisy**",
        f"- each client: one DetectTME job of {args.tiles_per_client} distinct PNG tiles (whole MoNuSeg images read at the "
        "plan's downsample, one 512 px tile each) + the TME report; server in-process on loopback",
        "- batching on: `--max-batch` " + str(args.max_batch) + f", wait {args.max_wait_ms} ms; off: max batch 1",
        "- MP/s sent = megapixels of the tiles as sent (working resolution); full-res = the full-resolution area they cover",
        f"- each cell ran {max(1, args.repeats)}x (sequential and concurrent interleaved); shown: the fastest run, "
        "and all runs' seconds",
        "",
        "| batching | clients | mode | tiles | seconds (best) | tiles/s | MP/s sent | MP/s full-res | mean batch | "
        "slowest / fastest job (worst run) | all runs (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        fair = f"{r.fairness:.2f}" if r.fairness == r.fairness else "–"
        lines.append(f"| {r.batching} (max {r.max_batch}) | {r.clients} | {r.mode} | {r.tiles} | {r.seconds:.2f} | "
                     f"{r.tiles_s:.2f} | {r.mpix_s:.3f} | {r.mpix_full_s:.3f} | {r.mean_batch:.2f} | {fair} | "
                     f"{', '.join(f'{t:.1f}' for t in r.all_seconds)} |")
    lines += ["", "Concurrent vs the same jobs one client after another (issue #16 target on CPU: >= 0.95x for 4 "
              "clients, and no job of equal size taking more than 1.5x another):", ""]
    for b in ("on", "off"):
        for n in clients:
            if n == 1:
                continue
            c, s = find(b, n, "concurrent"), find(b, n, "sequential")
            if c and s:
                lines.append(f"- batching {b}, {n} clients: {c.tiles_s / s.tiles_s:.2f}x")
    if serving:
        lines += ["", f"`segtme serve --model {spec} --device cpu` start -> health SERVING: "
                  + ", ".join(f"{t:.2f}" for t in serving) + f" s (best {min(serving):.2f} s; target <= 4 s)"]
    on4, off4 = find("on", 4, "concurrent"), find("off", 4, "concurrent")
    if on4 and off4:
        lines.append(f"- 4 concurrent clients, batching on vs off: {on4.tiles_s / off4.tiles_s:.2f}x")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as f:
        f.write(text)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
