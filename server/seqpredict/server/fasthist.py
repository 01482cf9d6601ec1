"""A histogram for the inference thread's per-request series: observe is a bisect and two adds.

prometheus_client's Histogram takes a lock and walks its buckets in Python on every
observation — a few microseconds, paid for every request of every batch, which profiles
showed as a tenth of the engine's time. These series have exactly one writer (the
inference thread), so no lock is needed: the scrape thread reads counts that may be one
observation behind, never torn ones.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class _Series:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class SingleWriterHistogram:
    """Same exposition as prometheus_client's Histogram; one thread may observe."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], _Series] = {}
        if not labelnames:
            self._series[()] = _Series(self._bounds)
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _Series:
        key = tuple(str(v) for v in values)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self._bounds)
        return series

    def observe(self, value: float) -> None:
        self._series[()].observe(value)

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, series in list(self._series.items()):
            counts, running, buckets = list(series.counts), 0, []
            for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))
            family.add_metric(list(key), buckets, series.sum)
        return [family]
