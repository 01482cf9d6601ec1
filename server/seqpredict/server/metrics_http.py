"""The metrics port: Prometheus' /metrics, and /healthz and /readyz for HTTP probes.

prometheus_client's own server gives every connection a thread with no timeout, so idle
connections could pile up threads and file descriptors without end. Here a connection is
closed after `timeout` seconds of silence and at most `max_connections` are served at
once (more are closed on arrival), so the port keeps answering whatever clients do.
Its connections do not count against the gRPC port's limit: an orchestrator probing
/readyz still gets an answer when gRPC connections are at their limit.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
SHUTDOWN_POLL_S = 0.05  # how soon shutdown() returns


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # at the limit: close it at once rather than queue a thread
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


STORE_DOWN = "the session store is unreachable"


def start_metrics_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    live: Callable[[], bool],
    ready: Callable[[], bool],
    max_connections: int = MAX_CONNECTIONS,
    degraded: Callable[[], str] = lambda: "",
) -> ThreadingHTTPServer:
    """Serve on a daemon thread; `live`: the process can serve at all, `ready`: health is SERVING,
    `degraded`: why it serves with something missing ('' when nothing is)."""

    class Handler(MetricsHandler):
        timeout = TIMEOUT_S  # applied to the connection's socket: a silent client is dropped

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/healthz", "/readyz"):
                ok = live() if path == "/healthz" else ready()
                why = degraded() if ok else ""
                body = (f"ok (degraded: {why})\n" if why else "ok\n" if ok else "unavailable\n").encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

    Handler.registry = registry
    return start_http(host, port, Handler, max_connections)


def start_http(host: str, port: int, handler: type, max_connections: int = MAX_CONNECTIONS) -> ThreadingHTTPServer:
    """A bounded HTTP server for `handler` on a daemon thread (also the supervisor's merged endpoint)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (_Server,), {"address_family": family})
    server = server_class((host, port), handler, max_connections)
    # shutdown() waits for the loop's next look at its flag: every process of the server stops one,
    # so the default 0.5 s interval added up to ~1.5 s on every drain.
    serve = functools.partial(server.serve_forever, poll_interval=SHUTDOWN_POLL_S)
    threading.Thread(target=serve, name="seqpredict-metrics", daemon=True).start()
    return server
