"""A frontend process: transport, validation, auth, admission, ordering of answers, metrics — no model.

Several frontends listen on the same port (SO_REUSEPORT) and the kernel spreads
connections over them; each hands its jobs to the one engine process and answers its own
calls. A frontend never imports torch. It stops on SIGTERM (the supervisor's drain: health
NOT_SERVING, open calls finish within the grace period) or when the engine is gone (then
every call in flight has already failed with INTERNAL), and exits 0, or 1 after losing the
engine. SIGINT is the supervisor's to handle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

from prometheus_client import disable_created_metrics

from seqpredict.server.config import Settings
from seqpredict.server.logs import configure_logging
from seqpredict.server.metrics import Metrics
from seqpredict.server.metrics_http import STORE_DOWN, start_metrics_server
from seqpredict.server.model_card import ModelCard
from seqpredict.server.remote import RemoteEngine
from seqpredict.server.transport import start_transport

log = logging.getLogger("seqpredict.server.frontend")


def main(
    settings: Settings, card: ModelCard, endpoint: str, engine_pid: int, index: int, port: int, conn: Connection
) -> None:
    configure_logging(settings.log_level, f"frontend-{index}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.exit(asyncio.run(serve(settings, card, endpoint, engine_pid, index, port, conn)))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        conn.send(("error", str(exc)))
        sys.exit(2)


async def serve(
    settings: Settings, card: ModelCard, endpoint: str, engine_pid: int, index: int, port: int, conn: Connection
) -> int:
    disable_created_metrics()
    metrics = Metrics()
    remote = RemoteEngine(endpoint, f"frontend-{index}", engine_pid)
    await remote.start()
    transport = await start_transport(settings, card, remote, metrics, port=port, reuse_port=True)
    metrics_http = start_metrics_server(
        "127.0.0.1",
        0,
        metrics.registry,
        live=lambda: remote.alive,
        ready=lambda: transport.serving,
        degraded=lambda: "" if remote.store_up else STORE_DOWN,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    supervisor = os.pidfd_open(os.getppid())  # gone (even SIGKILLed): drain and exit as if told to
    loop.add_reader(supervisor, stop.set)
    conn.send(("ready", metrics_http.server_port))
    waiters = (asyncio.create_task(stop.wait()), asyncio.create_task(transport.fatal.wait()))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    await transport.drain(settings.grace_s)
    loop.remove_reader(supervisor)
    os.close(supervisor)
    await remote.close()
    metrics_http.shutdown()
    metrics_http.server_close()
    return 1 if transport.fatal.is_set() else 0
