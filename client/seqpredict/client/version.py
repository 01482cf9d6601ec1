"""`--version` of the console scripts: the installed distribution's version, from its metadata."""

from __future__ import annotations

from importlib import metadata


def version_line(program: str, distribution: str) -> str:
    """e.g. "seqpredict 0.1.0 (seqpredict-client)"; a source tree that was never installed says so."""
    try:
        number = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        number = "unknown (not installed)"
    return f"{program} {number} ({distribution})"
