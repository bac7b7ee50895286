"""Bearer-token authentication and TLS for the gRPC server.

When a token is configured, **every** call (including health checks and reflection) must carry
the metadata ``authorization: Bearer <token>``; other calls end with UNAUTHENTICATED before any
handler runs. The comparison is constant-time. TLS is optional: PEM certificate + key files.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Callable

import grpc

from ..errors import InputError


def read_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The configured token: ``token`` itself, or the first line of ``token_file`` (whitespace
    stripped). Empty tokens are refused (an empty token would silently disable nothing)."""
    if token and token_file:
        raise InputError("give --token or --token-file, not both")
    if token_file:
        p = Path(token_file)
        try:
            lines = p.read_text().strip().splitlines()
        except OSError as e:
            raise InputError(f"cannot read token file {p}: {e}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise InputError(f"token file {p} is empty")
    if token is not None and not token.strip():
        raise InputError("the bearer token is empty")
    return token.strip() if token else None


def _abort_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as ``handler`` that ends with UNAUTHENTICATED."""

    def deny(_request_or_iterator, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def deny_stream(_request_or_iterator, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover  (abort raises)

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kw)
    return grpc.unary_unary_rpc_method_handler(deny, **kw)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("BearerTokenInterceptor needs a non-empty token")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        got = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key.lower() == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                break
        if got is not None and hmac.compare_digest(got, self._expected):
            return handler
        msg = "missing bearer token (metadata 'authorization: Bearer <token>')" if got is None else "invalid bearer token"
        return _abort_handler(handler, msg)


def server_credentials(cert_file: str | Path, key_file: str | Path) -> grpc.ServerCredentials:
    """TLS credentials from PEM certificate-chain and private-key files."""
    try:
        cert = Path(cert_file).read_bytes()
        key = Path(key_file).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read TLS certificate/key: {e}") from None
    if b"-----BEGIN" not in cert or b"-----BEGIN" not in key:
        raise InputError(f"TLS files must be PEM: {cert_file}, {key_file}")
    return grpc.ssl_server_credentials([(key, cert)])
