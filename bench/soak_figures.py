"""The figures the soak's verdict and report are computed from, as pure functions of its samples.

A sample (soak.py's sampler, every 2 s) is a dict: t (seconds since the start), rss_bytes,
sessions, streams, streams_paused, calls (answers the load has had so far) and never_read
(whether the client that never reads held a stream).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

MB = 2**20
Sample = dict[str, Any]


def rss_trend(samples: Sequence[Sample], duration: float) -> tuple[float, float] | None:
    """(slope in MB/min, intercept in MB) of RSS over the second half of the run; None with too few samples."""
    half = [s for s in samples if s["t"] >= duration / 2]
    if len(half) < 3:
        return None
    minutes = np.array([s["t"] / 60 for s in half])
    mb = np.array([s["rss_bytes"] / MB for s in half])
    slope, intercept = np.polyfit(minutes, mb, 1)
    return float(slope), float(intercept)


def longest_stall(samples: Sequence[Sample]) -> float:
    """The longest span (seconds) between samples over which the load got no answer at all."""
    longest, since = 0.0, None
    for before, after in itertools.pairwise(samples):
        if after["calls"] == before["calls"]:
            since = before["t"] if since is None else since
            longest = max(longest, after["t"] - since)
        else:
            since = None
    return longest


def phase_rates(samples: Sequence[Sample], after: float = 0.0) -> dict[str, float | None]:
    """Answers per second the load got with the never-reading client on and off, over the sample
    intervals (starting at `after` seconds) that lie wholly inside one phase; None for a phase never seen."""
    calls = {True: 0.0, False: 0.0}
    seconds = {True: 0.0, False: 0.0}
    for before, later in itertools.pairwise(samples):
        if before["t"] < after or before["never_read"] != later["never_read"]:
            continue
        calls[before["never_read"]] += later["calls"] - before["calls"]
        seconds[before["never_read"]] += later["t"] - before["t"]
    return {
        "on": calls[True] / seconds[True] if seconds[True] else None,
        "off": calls[False] / seconds[False] if seconds[False] else None,
    }


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """min, median and max of a series (None when empty), for the report's one-line summaries."""
    if not values:
        return None
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}
