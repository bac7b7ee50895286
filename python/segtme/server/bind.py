"""Checking that the server can listen on ``host:port`` before anything expensive is loaded."""

from __future__ import annotations

import errno
import ipaddress
import socket

from ..errors import InputError


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC expects it (IPv6 literals in brackets)."""
    h = host.strip("[]")
    try:
        if ipaddress.ip_address(h).version == 6:
            return f"[{h}]:{port}"
    except ValueError:
        pass
    return f"{h}:{port}"


def check_bindable(host: str, port: int) -> None:
    """Raise ``InputError`` (one line: "cannot listen on HOST:PORT: reason") unless a TCP socket
    can be bound to ``host:port`` right now. Binds the way gRPC does (SO_REUSEADDR, so a port
    with only TIME_WAIT connections counts as free) and closes the socket at once; ``port`` 0
    always binds. A host that resolves to several addresses (``localhost``: 127.0.0.1 and ::1)
    must bind on at least one, and a port in use on any of them is refused."""
    addr = grpc_address(host, port)
    if not 0 <= int(port) <= 65535:
        raise InputError(f"cannot listen on {addr}: the port must be 0-65535")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise InputError(f"cannot listen on {addr}: {host!r} is not a valid address or known host name ({e})") from None
    ok, errors = 0, []
    for family, stype, proto, _canon, sockaddr in infos:
        s = None
        try:
            s = socket.socket(family, stype, proto)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(sockaddr)
            ok += 1
        except OSError as e:
            errors.append((sockaddr[0], e))
        finally:
            if s is not None:
                s.close()
    for ip, e in errors:
        if e.errno == errno.EADDRINUSE:
            raise InputError(f"cannot listen on {addr}: port {port} is already in use on {ip} "
                             "(another server running? pick another --port)")
    if not ok:
        ip, e = errors[0]
        raise InputError(f"cannot listen on {addr}: {e.strerror or e} ({ip})")
