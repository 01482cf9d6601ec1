"""`seqpredict-server`: read the settings, serve until SIGTERM/SIGINT, shut down in order.

With `--frontends N` (N >= 1) the server is N gRPC frontend processes in front of one engine
process, under a supervisor (`supervisor`); with `--frontends 0`, one process (`app`).

Exit codes: 0 after a clean drain; 1 when the final snapshot failed or the engine died (the
orchestrator should restart us; sessions come back from the last snapshot); 2 for a bad
setting or anything else that stops the server at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import fields

from seqpredict.models import CheckpointError
from seqpredict.server.config import ENV_PREFIX, Settings
from seqpredict.server.envcheck import unknown_variables
from seqpredict.server.errors import StartupError
from seqpredict.server.logs import configure_logging

log = logging.getLogger("seqpredict.server")


async def serve_one_process(settings: Settings) -> int:
    from seqpredict.server.app import create_server  # torch, only where the engine runs in this process

    app = await create_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():  # a second signal: the operator does not want to wait for the drain
            log.warning("%s again: exiting now without draining", sig.name)
            os._exit(1)
        log.info("%s received: draining (send it again to exit at once)", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    stopped, fatal = asyncio.create_task(stop.wait()), asyncio.create_task(app.fatal.wait())
    await asyncio.wait((stopped, fatal), return_when=asyncio.FIRST_COMPLETED)
    saved = await app.stop()
    if app.fatal.is_set():
        log.error("exiting with status 1: the inference thread died")
        return 1
    if not saved:
        log.error("exiting with status 1: the final snapshot was not written")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_args(argv)
    except ValueError as exc:
        print(f"seqpredict-server: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, "supervisor" if settings.frontends else None)
    log.info("settings:\n%s", settings.describe())
    for warning in unknown_variables(os.environ, (ENV_PREFIX + f.name.upper() for f in fields(Settings))):
        log.warning("%s", warning)
    try:
        if settings.frontends == 0:
            return asyncio.run(serve_one_process(settings))
        from seqpredict.server.supervisor import run

        return run(settings)
    except (CheckpointError, StartupError) as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
