"""The SegTME gRPC server: ``build_server(ServerConfig)`` and the running ``SegTMEServer``.

``build_server`` loads each model once (``runners.load_runners``), starts one ``MicroBatcher``
per model, and returns a started server with the SegTME service (``handlers.SegTMEServicer``),
the standard ``grpc.health.v1`` health service and server reflection, behind the optional
bearer-token interceptor and TLS. The package's other files each do one job:
``requests`` (validating/decoding what clients send), ``tiles`` (one tile at the model's
resolution), ``job`` (a job's tiles in flight and their stitching), ``messages`` / ``report``
(what is sent back), ``runners`` (models + batchers), ``bind`` (listen-address checks).

Shutdown (``SegTMEServer.stop``): health turns NOT_SERVING and new jobs get UNAVAILABLE at once,
while the server keeps answering (health checks, running streams) for up to the grace period or
until the running jobs have finished; then remaining calls are cancelled and the batchers stop.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc

from ..version import __version__
from ..errors import InputError, SegTMEError
from ._proto.segtme.v1 import segtme_pb2 as pb
from ._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc
from .bind import grpc_address
from .config import ServerConfig
from .handlers import SegTMEServicer
from .job import TileJob
from .runners import ModelRunner, attach_instance_sources, load_runners, make_runner

__all__ = ["SERVICE_NAME", "SegTMEServer", "ServerConfig", "ModelRunner", "SegTMEServicer", "TileJob",
           "attach_instance_sources", "build_server", "load_runners", "make_runner"]

log = logging.getLogger("segtme.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SegTME"].full_name


class SegTMEServer:
    """A running server: ``port``, ``stop(grace)``, ``wait()``."""

    def __init__(self, server: grpc.Server, port: int, servicer: SegTMEServicer, health, config: ServerConfig,
                 owns_runners: bool = True):
        self.owns_runners = owns_runners
        self.server = server
        self.port = port
        self.servicer = servicer
        self.health = health
        self.config = config
        self._stopped = threading.Event()

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health -> NOT_SERVING and new jobs refused (UNAVAILABLE) at once; the
        server keeps answering while running jobs finish, for at most ``grace`` seconds
        (default ``config.grace_s``); then it stops listening, cancels what still runs and
        shuts the batchers down."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        from grpc_health.v1 import health_pb2

        grace = self.config.grace_s if grace is None else float(grace)
        t_end = time.monotonic() + max(0.0, grace)
        self.servicer.draining.set()
        for svc in ("", SERVICE_NAME):
            self.health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.enter_graceful_shutdown()
        while self.servicer.slots.in_use > 0 and time.monotonic() < t_end:
            time.sleep(0.05)
        if self.servicer.slots.in_use:
            log.info("grace period over: cancelling %d running job(s)", self.servicer.slots.in_use)
        ev = self.server.stop(max(0.0, min(0.5, t_end - time.monotonic())))
        ev.wait()
        if self.owns_runners:
            seen: set[int] = set()
            for r in self.servicer.runners.values():
                for b in r.batchers():
                    if id(b) not in seen:
                        seen.add(id(b))
                        b.close()
        log.info("server stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()


def build_server(config: ServerConfig, runners: dict[str, ModelRunner] | None = None,
                 aliases: dict[str, str] | None = None) -> SegTMEServer:
    """Create, bind and start the server (``config.port`` 0 = pick a free port). A busy port
    or an address that cannot be bound -> ``SegTMEError`` (one line), not gRPC's RuntimeError."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from .auth import BearerTokenInterceptor, server_credentials

    if config.tls_cert or config.tls_key:
        if not (config.tls_cert and config.tls_key):
            raise InputError("TLS needs both --tls-cert and --tls-key")
    owns = runners is None
    if runners is None:
        runners, aliases = load_runners(config)
    lim = config.limits
    servicer = SegTMEServicer(runners, lim, config.max_batch, aliases)
    # streams + unary calls + health; beyond this gRPC answers RESOURCE_EXHAUSTED instead of queueing
    workers = lim.max_concurrent_streams + 8
    interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    options = [
        ("grpc.max_receive_message_length", int(lim.max_message_bytes)),
        ("grpc.max_send_message_length", int(lim.max_message_bytes)),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segtme-rpc"),
        interceptors=interceptors, options=options, maximum_concurrent_rpcs=workers,
    )
    pb_grpc.add_SegTMEServicer_to_server(servicer, server)
    hs = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    addr = grpc_address(config.host, config.port)
    try:
        if config.tls_cert:
            port = server.add_secure_port(addr, server_credentials(config.tls_cert, config.tls_key))
        else:
            port = server.add_insecure_port(addr)
    except RuntimeError as e:  # grpcio >= 1.5x raises instead of returning 0
        port = 0
        reason = str(e).splitlines()[0] if str(e) else "bind failed"
    else:
        reason = "bind failed"
    if port == 0:
        if owns:
            _close_batchers(runners)
        raise SegTMEError(f"cannot listen on {addr}: {reason} (port in use or address not available)")
    server.start()
    for svc in ("", SERVICE_NAME):
        hs.set(svc, health_pb2.HealthCheckResponse.SERVING)
    log.info("segtme server %s listening on %s (%s, token=%s, models=%s, max_batch=%d, idle timeout %g s)", __version__,
             grpc_address(config.host, port), "TLS" if config.tls_cert else "plaintext",
             "yes" if config.token else "no", list(runners), config.max_batch, lim.idle_timeout_s)
    return SegTMEServer(server, port, servicer, hs, config, owns_runners=owns)


def _close_batchers(runners: dict[str, ModelRunner]) -> None:
    for r in runners.values():
        for b in r.batchers():
            b.close()
