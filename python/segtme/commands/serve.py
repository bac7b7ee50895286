"""`segtme serve`: the gRPC server QuPath talks to (see docs/server.md).

Prints exactly one line ``SEGTME_SERVER_LISTENING port=<n>`` on stdout (flushed) once the server
accepts calls; clients that start the server as a subprocess (the QuPath extension's end-to-end
test) read that line, so it is a stable interface. Everything else goes to the log (stderr).
"""

from __future__ import annotations

import argparse

#: the readiness line printed on stdout (stable: clients parse it)
LISTENING_LINE = "SEGTME_SERVER_LISTENING port={port}"


def register(sub: argparse._SubParsersAction) -> None:
    from ..server.limits import ServerLimits

    d = ServerLimits()
    p = sub.add_parser("serve", help="run the gRPC server (QuPath extension backend)",
                       description="Serve SegTME over gRPC: DetectTME streams, AnalyzeImage, Narrate, health, reflection.",
                       epilog="examples:\n  segtme serve --port 50051 --model default\n"
                       "  segtme serve --host 0.0.0.0 --port 50051 --model default --model paget_s   # with --token and TLS",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, loopback only; use 0.0.0.0 with --token and TLS)")
    p.add_argument("--port", type=int, default=50051, help="TCP port (0 = pick a free one; default 50051)")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="model name, preset or .json/.safetensors path; repeat to serve several (first = default)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="forward-pass arithmetic: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    p.add_argument("--max-batch", type=int, default=None,
                   help="micro-batch size of the shared batcher (1 = off; default: 8 on CUDA, 1 on CPU, where "
                        "docs/bench_server.md measured batching to cost throughput)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long the batcher waits to fill a batch")
    p.add_argument("--queue-size", type=int, default=64, help="tiles queued for the model, all streams together")
    p.add_argument("--instance-source", default=None, metavar="SPEC",
                   help="nucleus instance model for PAGET-H models (default: the model config's, else `default`)")
    g = p.add_argument_group("security")
    g.add_argument("--token", help="bearer token required on every call (prefer --token-file)")
    g.add_argument("--token-file", help="file whose first line is the bearer token")
    g.add_argument("--tls-cert", help="PEM certificate chain (enables TLS together with --tls-key)")
    g.add_argument("--tls-key", help="PEM private key")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    lim.add_argument("--max-tile-pixels", type=int, default=d.max_tile_pixels, help="width*height of one tile as sent")
    lim.add_argument("--max-tiles-per-stream", type=int, default=d.max_tiles_per_stream)
    lim.add_argument("--max-concurrent-streams", type=int, default=d.max_concurrent_streams)
    lim.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels, help="AnalyzeImage image size limit")
    lim.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="S",
                     help="close a DetectTME stream whose client sent nothing for S seconds while the server had "
                          f"nothing to send it (DEADLINE_EXCEEDED; frees its job slot; default {d.idle_timeout_s:g})")
    p.add_argument("--grace", type=float, default=10.0,
                   help="on SIGTERM/SIGINT: seconds running jobs may finish (health answers NOT_SERVING and new jobs "
                        "get UNAVAILABLE meanwhile)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up forward pass (by default it runs in the background once the server is up)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys
    import threading

    from ..errors import InputError
    from ..server.auth import read_token
    from ..server.limits import ServerLimits

    log = logging.getLogger("segtme.server")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0-65535, got {args.port}")
    if args.max_batch is not None and args.max_batch < 1:
        raise InputError(f"--max-batch must be >= 1, got {args.max_batch}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("TLS needs both --tls-cert and --tls-key")
    try:
        limits = ServerLimits(
            max_message_bytes=args.max_message_bytes, max_tile_pixels=args.max_tile_pixels,
            max_tiles_per_stream=args.max_tiles_per_stream, max_concurrent_streams=args.max_concurrent_streams,
            max_image_pixels=args.max_image_pixels, idle_timeout_s=args.idle_timeout,
        )
    except ValueError as e:
        raise InputError(str(e)) from None
    if not (args.grace >= 0 and args.grace < float("inf")):
        raise InputError(f"--grace must be a finite number >= 0, got {args.grace}")
    token = read_token(args.token, args.token_file)
    from ..server.bind import check_bindable

    check_bindable(args.host, args.port)  # a busy port or a bad --host: one line, before the model loads
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("binding %s without --token: anyone who can reach this port can use the server", args.host)
    from ..runtime import limit_malloc_arenas

    limit_malloc_arenas()  # before the server's threads allocate (flat RSS under load; docs/server.md)
    from ..server.service import ServerConfig, build_server  # heavy (torch): after argument checks

    max_batch = args.max_batch
    if max_batch is None:
        from ..models.registry import device_type

        try:
            max_batch = 8 if device_type(args.device) == "cuda" else 1
        except ValueError as e:
            raise InputError(str(e)) from None

    cfg = ServerConfig(
        host=args.host, port=args.port, models=args.models or ["default"], device=args.device, precision=args.precision,
        max_batch=max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, limits=limits,
        token=token, tls_cert=args.tls_cert, tls_key=args.tls_key, grace_s=args.grace, warmup=not args.no_warmup,
        instance_source=args.instance_source,
    )
    try:
        server = build_server(cfg)
    except ValueError as e:  # e.g. invalid device
        raise InputError(str(e)) from None
    # SegTMEError (e.g. the port was taken between the check and the bind) -> "error: ..." exit 2

    done = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: shutting down (grace %.1f s)", signal.Signals(signum).name, cfg.grace_s)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.stdout.write(LISTENING_LINE.format(port=server.port) + "\n")
    sys.stdout.flush()
    while not done.wait(0.5):
        pass
    server.stop()
    return 0
