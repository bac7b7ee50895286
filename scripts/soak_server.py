#!/usr/bin/env python
"""Memory soak of `segtme serve`: RSS of the server process over repeated rounds of real load.

    .venv/bin/python scripts/soak_server.py                       # 6 rounds x 8 clients x 50 tiles
    .venv/bin/python scripts/soak_server.py --rounds 3 --clients 2 --tiles 10 --out /tmp/soak.md

Starts ``segtme serve`` as a subprocess on loopback (``--host 127.0.0.1 --port 0``; the port
comes from its readiness line), then runs ``--rounds`` rounds; in each round ``--clients``
client threads at once each stream one DetectTME job of ``--tiles`` real tiles and wait for the
TME report. The tiles are whole MoNuSeg / CoNSeP images from ``SEGTME_DATA_DIR`` (default
``../shared/data``), read at the stream plan's downsample (the model's working MPP) and PNG-encoded
before the clock starts; each client starts at a different tile. After each round the script
waits ``--settle`` seconds and reads the server's ``VmRSS`` / ``VmHWM`` from ``/proc/<pid>/status``.

Bounded: every call has a deadline, the whole run stops after ``--max-seconds`` and the server is
terminated (SIGTERM, then SIGKILL) however the script ends. Loopback only: the server is bound to
127.0.0.1 and nothing else is contacted. The target (issue #13): RSS after the last round within
10 % of RSS after round 2.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))


def data_dir() -> Path:
    return Path(os.environ.get("SEGTME_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


def load_images(n: int) -> list[tuple["object", float, str]]:
    """Up to ``n`` real images (rgb, mpp, name): MoNuSeg first, then CoNSeP."""
    import numpy as np
    from PIL import Image

    out = []
    for folder in ("monuseg-train", "consep-train"):
        root = data_dir() / folder
        idx = root / "index.json"
        if not idx.is_file():
            continue
        index = json.loads(idx.read_text())
        items = index["items"] if isinstance(index, dict) and "items" in index else index
        for it in items:
            if len(out) >= n:
                return out
            out.append((np.asarray(Image.open(root / it["image"]).convert("RGB")), float(it.get("mpp") or 0.25),
                        f"{folder}/{it['image']}"))
    if not out:
        raise SystemExit(f"no MoNuSeg/CoNSeP data under {data_dir()} (set SEGTME_DATA_DIR)")
    return out


def make_tiles(images, model_mpp: float, tile_size: int, overlap: int, n: int):
    """``n`` Tile messages: the stream plan's tiles over each whole image, in turn."""
    from PIL import Image

    from segtme.resample import resample
    from segtme.inference.tiling import plan_stream_tiles
    from segtme.server._proto.segtme.v1 import segtme_pb2 as pb

    tiles = []
    for rgb, mpp, _name in images:
        H, W = rgb.shape[:2]
        for t in plan_stream_tiles((0, 0, W, H), (W, H), mpp, model_mpp, tile_size, overlap):
            rx, ry, rw, rh = t.region
            small = resample(rgb[ry:ry + rh, rx:rx + rw], 1.0 / t.d)
            buf = io.BytesIO()
            Image.fromarray(small).save(buf, "PNG")
            x0, y0, x1, y1 = t.core
            tiles.append((mpp, pb.Tile(x=rx, y=ry, downsample=t.d, width=small.shape[1], height=small.shape[0],
                                       core=pb.Rect(x=x0, y=y0, width=x1 - x0, height=y1 - y0), encoding=pb.PNG,
                                       pixels=buf.getvalue())))
            if len(tiles) >= n:
                return tiles
    return tiles


def job_messages(tiles, start: int, n: int, job_id: str):
    """One job's messages: ``n`` tiles from ``start`` on (cyclic), each its own image region.

    Tiles of different images would overlap in full-res coordinates, so each tile is shifted to
    its own column of the (virtual) slide: tile k sits at x + k * 100000."""
    from segtme.server._proto.segtme.v1 import segtme_pb2 as pb

    mpp = tiles[start % len(tiles)][0]
    msgs = [pb.DetectRequest(config=pb.JobConfig(image_mpp=mpp, job_id=job_id, expected_tiles=n))]
    for k in range(n):
        _m, t = tiles[(start + k) % len(tiles)]
        tt = pb.Tile()
        tt.CopyFrom(t)
        shift = 100_000 * k
        tt.index, tt.x = k, t.x + shift
        tt.core.x = t.core.x + shift
        msgs.append(pb.DetectRequest(tile=tt))
    msgs.append(pb.DetectRequest(end=pb.End()))
    return msgs


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB (1e6 bytes)."""
    d = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            d[k] = int(v.split()[0]) * 1024 / 1e6
    return d["VmRSS"], d["VmHWM"]


def read_ready_line(proc: subprocess.Popen, timeout: float) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"segtme serve exited early ({proc.returncode}); see its log")
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            return proc.stdout.readline()
    raise SystemExit("no readiness line from segtme serve")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tiles", type=int, default=50, help="tiles per client per round")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before reading RSS after a round")
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="stop the whole run after this long")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra argument for segtme serve (repeatable)")
    ap.add_argument("--log", type=Path, default=None, help="server log file (default: a temporary file)")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    if args.rounds < 2 or args.clients < 1 or args.tiles < 1:
        raise SystemExit("need --rounds >= 2, --clients >= 1, --tiles >= 1")

    import grpc

    from segtme.models.registry import load_model
    from segtme.server._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc

    cfg = load_model(args.model, "cpu").config  # for the tile plan (client side)
    images = load_images(args.tiles)
    tiles = make_tiles(images, cfg.mpp, cfg.tile_size, cfg.tile_overlap, args.tiles)
    t_start = time.monotonic()
    log_path = args.log or Path(os.environ.get("TMPDIR", "/tmp")) / f"soak_server_{os.getpid()}.log"
    log_f = open(log_path, "w")
    cmd = [sys.executable, "-m", "segtme.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--model", args.model,
           "--device", "cpu", "--max-concurrent-streams", str(max(16, args.clients)), *args.serve_arg]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_f, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    rows = []
    try:
        line = read_ready_line(proc, 300)
        t_ready = time.perf_counter() - t0
        port = int(line.strip().split("=", 1)[1])
        rss0, _ = rss_mb(proc.pid)
        print(f"server pid {proc.pid} port {port}: ready in {t_ready:.2f} s, RSS {rss0:.0f} MB; "
              f"{len(tiles)} tiles from {len(images)} images; log {log_path}", flush=True)
        ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20),
                                                                  ("grpc.max_receive_message_length", 64 << 20)])
        stub = pb_grpc.SegTMEStub(ch)
        for rnd in range(1, args.rounds + 1):
            left = args.max_seconds - (time.monotonic() - t_start)
            if left <= 0:
                print("time budget used up; stopping", flush=True)
                break
            jobs = [job_messages(tiles, 7 * c + rnd, args.tiles, f"soak-r{rnd}-c{c}") for c in range(args.clients)]
            errors: list[str] = []
            totals: list[int] = []

            def client(msgs):
                try:
                    last = None
                    for r in stub.DetectTME(iter(msgs), timeout=left):
                        last = r
                    if last is None or last.WhichOneof("msg") != "report":
                        errors.append("no report")
                    else:
                        totals.append(last.report.nuclei_total)
                except grpc.RpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")

            tr = time.perf_counter()
            th = [threading.Thread(target=client, args=(m,)) for m in jobs]
            for t in th:
                t.start()
            for t in th:
                t.join()
            dt = time.perf_counter() - tr
            time.sleep(args.settle)
            rss, hwm = rss_mb(proc.pid)
            rows.append(dict(round=rnd, seconds=dt, tiles=args.clients * args.tiles, errors=len(errors),
                             nuclei=sum(totals), rss=rss, hwm=hwm, load=os.getloadavg()[0]))
            print(f"round {rnd}: {dt:6.1f} s  {args.clients * args.tiles / dt:5.2f} tiles/s  nuclei {sum(totals)}  "
                  f"errors {len(errors)}  RSS {rss:.0f} MB  peak {hwm:.0f} MB  load {os.getloadavg()[0]:.1f}",
                  flush=True)
            for e in errors[:3]:
                print("   ", e, flush=True)
        ch.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_f.close()

    lines = ["| round | seconds | tiles | tiles/s | nuclei | errors | RSS after (MB) | peak RSS (MB) | load (1 min) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['round']} | {r['seconds']:.1f} | {r['tiles']} | {r['tiles'] / r['seconds']:.2f} | "
                     f"{r['nuclei']} | {r['errors']} | {r['rss']:.0f} | {r['hwm']:.0f} | {r['load']:.1f} |")
    verdict = ""
    if len(rows) >= 2:
        growth = rows[-1]["rss"] / rows[1]["rss"] - 1
        verdict = (f"RSS after round {rows[-1]['round']} vs after round 2: {100 * growth:+.1f} % "
                   f"({'within' if abs(growth) <= 0.10 else 'OUTSIDE'} the 10 % target); "
                   f"at start (ready, idle): {rss0:.0f} MB; start to ready: {t_ready:.2f} s")
    text = "\n".join(lines) + "\n\n" + verdict + "\n"
    print()
    print(text)
    if args.out:
        args.out.write_text(text)
    bad = sum(r["errors"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
