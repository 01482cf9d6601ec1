"""The listening ports, tried before anything else starts, so a taken one is a sentence naming it.

Left to grpc, a taken gRPC port is a C-core log line and a 20-line RuntimeError traceback that
names neither the setting nor a way out; a taken metrics port is "[Errno 98] Address already in
use". A second `make run` is the usual cause, so the message says how to choose another port.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(OSError):
    """A port this server must listen on is taken; the message names it and the setting that moves it."""


def in_use_message(what: str, host: str, port: int, flag: str) -> str:
    env = "SEQPREDICT_" + flag.removeprefix("--").replace("-", "_").upper()
    return (
        f"the {what} port {host}:{port} is already in use (another seqpredict-server, a second `make run`?); "
        f"stop that one, or choose another port with {flag} or {env} (0 picks a free one)"
    )


def check_free(what: str, host: str, port: int, flag: str) -> None:
    """PortInUse when `host:port` cannot be bound; port 0 (any free port) always can.

    SO_REUSEADDR, as grpc and http.server set it: a port left in TIME_WAIT by a server that just
    stopped is free to them, so it is free here too.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # an address that does not resolve: the bind itself will say so
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(in_use_message(what, host, port, flag)) from None
            raise
