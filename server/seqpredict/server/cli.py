"""`seqpredict-server`: read the settings, serve until SIGTERM/SIGINT, shut down in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import fields

from seqpredict.models import CheckpointError
from seqpredict.server.app import create_server
from seqpredict.server.config import ENV_PREFIX, Settings
from seqpredict.server.envcheck import unknown_variables

log = logging.getLogger("seqpredict.server")


async def serve(settings: Settings) -> None:
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
    await stop.wait()
    await app.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_args(argv)
    except ValueError as exc:
        print(f"seqpredict-server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    log.info("settings:\n%s", settings.describe())
    for warning in unknown_variables(os.environ, (ENV_PREFIX + f.name.upper() for f in fields(Settings))):
        log.warning("%s", warning)
    try:
        asyncio.run(serve(settings))
    except CheckpointError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
