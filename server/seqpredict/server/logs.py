"""Log lines of every server process in one format, each naming the process it came from.

The supervisor, the engine and the frontends write to the same stderr; `[engine]` or
`[frontend-2]` says which one spoke.
"""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str, role: str | None = None) -> None:
    tag = f" [{role}]" if role else ""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
