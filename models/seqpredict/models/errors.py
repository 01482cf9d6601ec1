"""The model side's errors, apart from torch: a process that only reports them (the server's
command line, its supervisor) does not load torch for that."""

from __future__ import annotations


class CheckpointError(Exception):
    """A file that cannot be served; the message is one line and names the file."""
