"""``ServerConfig``: everything ``segtme serve`` configures (a plain dataclass; no imports of torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .limits import ServerLimits


@dataclass
class ServerConfig:
    """Everything ``segtme serve`` configures.

    models: model specs for ``load_model`` (name, preset or .json/.safetensors path); the first
    is the default. max_batch: micro-batch size (1 = batching off); max_wait_ms: how long the
    batcher waits for a batch to fill; queue_size: tiles queued for the model (all streams).
    token / tls_cert / tls_key: optional bearer token and TLS PEM files. grace_s: how long
    in-flight calls may finish on shutdown (health answers NOT_SERVING meanwhile; new
    jobs get UNAVAILABLE).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    models: list[str] = field(default_factory=lambda: ["default"])
    device: str = "auto"
    #: forward-pass arithmetic for every model (``LoadedModel.precision``: auto | fp32 | bf16)
    precision: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    queue_size: int = 64
    limits: ServerLimits = field(default_factory=ServerLimits)
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    grace_s: float = 10.0
    warmup: bool = True
    allow_random: bool = False
    #: PAGET-H instance source (model spec) for every PAGET-H model; None = each config's
    #: ``extra["instance_source"]`` (default: the shipped ``default`` UperHoVer)
    instance_source: str | None = None

