"""A latency histogram with bounded memory, for percentiles over runs of any length.

A 600-second load run at 8 k messages/s is ~5 M samples; keeping them all costs hundreds of
MB in the load generator's own process and perturbs what it measures. Log-spaced buckets
(HdrHistogram's idea) keep every percentile within 1 % of the exact value at a few hundred
dict entries, and recording is one log and one dict update.
"""

from __future__ import annotations

import math

# Relative width of a bucket: percentiles come back within this fraction of the truth.
RESOLUTION = 0.01
# Anything faster than this (100 ns) is clock noise, not a latency.
FLOOR_S = 1e-7


class LatencyHistogram:
    """Counts of durations (seconds) in log-spaced buckets; weights let one sample stand for many tokens."""

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self._log_base = math.log1p(resolution)
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def record(self, seconds: float, weight: int = 1) -> None:
        idx = math.floor(math.log(max(seconds, FLOOR_S)) / self._log_base)
        self._counts[idx] = self._counts.get(idx, 0) + weight
        self.count += weight
        self.total_s += seconds * weight
        if seconds > self.max_s:
            self.max_s = seconds

    def merge(self, other: LatencyHistogram) -> None:
        for idx, n in other._counts.items():
            self._counts[idx] = self._counts.get(idx, 0) + n
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) in seconds: the geometric middle of the bucket holding it."""
        if not self.count:
            return math.nan
        rank = q / 100 * self.count
        seen = 0
        for idx in sorted(self._counts):
            seen += self._counts[idx]
            if seen >= rank:
                return math.exp((idx + 0.5) * self._log_base)
        return self.max_s

    def summary_ms(self) -> dict[str, float | int | None]:
        """p50/p90/p99/mean/max in milliseconds (None when empty), and the sample count."""
        if not self.count:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
        return {
            "count": self.count,
            "p50": round(self.percentile(50) * 1e3, 4),
            "p90": round(self.percentile(90) * 1e3, 4),
            "p99": round(self.percentile(99) * 1e3, 4),
            "mean": round(self.total_s / self.count * 1e3, 4),
            "max": round(self.max_s * 1e3, 4),
        }

    def summary_us(self) -> dict[str, float | int | None]:
        """p50 and mean in microseconds (None when empty), and the sample count: for short operations."""
        if not self.count:
            return {"count": 0, "p50_us": None, "mean_us": None}
        return {
            "count": self.count,
            "p50_us": round(self.percentile(50) * 1e6, 1),
            "mean_us": round(self.total_s / self.count * 1e6, 1),
        }
