"""`--version` of seqpredict-train and seqpredict-eval, from the installed distribution's metadata.

The client has the same for its CLI; the model side keeps its own so that it imports no grpc.
"""

from __future__ import annotations

from importlib import metadata


def version_line(program: str) -> str:
    try:
        number = metadata.version("seqpredict")
    except metadata.PackageNotFoundError:
        number = "unknown (not installed)"
    return f"{program} {number} (seqpredict)"
