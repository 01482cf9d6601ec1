"""The engine process: the model, the session pool, the scheduler and the snapshots, nothing else.

Started by the supervisor (spawned: no inherited threads or locks), it loads everything,
reports ready with the model's card, and serves frontends over its socket (`engine_loop`)
until asked to stop — by the supervisor's stop message or SIGTERM — after which it finishes
what is queued, writes the final snapshot and exits: 0, or 1 when the snapshot failed or
the loop broke. SIGINT and SIGTERM are the supervisor's to handle — a terminal's Ctrl-C, or
a service manager's SIGTERM, may reach the whole process group, and the engine must stop
after the frontends, not with them — so they are ignored here; if the supervisor itself
disappears, the engine stops as if asked to.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection

from prometheus_client import disable_created_metrics

from seqpredict.models import CheckpointError
from seqpredict.server.config import Settings
from seqpredict.server.engine_loop import EngineLoop
from seqpredict.server.engine_side import build_engine_side
from seqpredict.server.errors import EXIT_SNAPSHOT_FAILED, StartupError
from seqpredict.server.logs import configure_logging
from seqpredict.server.metrics import Metrics
from seqpredict.server.metrics_http import start_metrics_server

log = logging.getLogger("seqpredict.server.engine")

EXIT_BROKEN = 70  # the loop itself failed (EX_SOFTWARE)


def main(settings: Settings, endpoint: str, conn: Connection) -> None:
    configure_logging(settings.log_level, "engine")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    disable_created_metrics()
    metrics = Metrics()
    try:
        side = build_engine_side(settings, metrics)
        loop = EngineLoop(side, endpoint, os.getppid())
    except (CheckpointError, StartupError, OSError) as exc:
        log.error("%s", exc)
        conn.send(("error", str(exc)))
        sys.exit(2)

    metrics_http = start_metrics_server(
        "127.0.0.1", 0, metrics.registry, live=lambda: True, ready=lambda: not loop.stop_requested
    )
    metrics.ready.set(1)
    metrics.engine_heartbeat_age.set_function(lambda: time.monotonic() - loop.heartbeat)
    conn.send(("ready", side.card, metrics_http.server_port))
    try:
        loop.run()
    except BaseException as exc:
        log.critical("the engine loop died; failing every request in flight", exc_info=exc)
        loop.fail_everything(exc)
        sys.exit(EXIT_BROKEN)
    metrics.ready.set(0)
    saved = side.finish()
    metrics_http.shutdown()
    sys.exit(0 if saved else EXIT_SNAPSHOT_FAILED)
