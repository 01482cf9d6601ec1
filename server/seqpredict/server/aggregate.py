"""One metrics endpoint for a server of several processes, with the same names as a single process.

Every process (the engine, each frontend) keeps its own registry — the engine's hot-path
histograms stay lock-free — and serves it on a loopback port of its own. The supervisor's
/metrics fetches them all and merges them: series with the same name and labels are
added up (RPC counts from every frontend, tokens from the engine, memory and CPU of all
processes), except the few where a sum means nothing (readiness: the least ready process;
heartbeat age: the oldest; start time: the earliest; limits and model info: as reported).
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 5.0
TAKE_MIN = {"seqpredict_ready", "seqpredict_state_store_up", "process_start_time_seconds", "process_max_fds"}
TAKE_MAX = {"seqpredict_engine_heartbeat_age_seconds", "seqpredict_sessions_limit", "seqpredict_model_info"}


def merge(texts: Iterable[str]) -> list[Metric]:
    """The families of several expositions, their samples combined per name and label set."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif sample.name in TAKE_MIN:
                    samples[key] = min(samples[key], sample.value)
                elif sample.name in TAKE_MAX:
                    samples[key] = max(samples[key], sample.value)
                else:
                    samples[key] += sample.value
            merged.samples = []  # filled below, once every text is in
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class _Merged:
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


def exposition(urls: Iterable[str]) -> bytes:
    """The merged text exposition of every process; a process that does not answer is left out."""
    texts = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
                texts.append(response.read().decode())
        except OSError as exc:
            log.warning("metrics of %s unavailable: %s", url, exc)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merge(texts)))  # type: ignore[arg-type]
    return generate_latest(registry)


def probe(url: str) -> str | None:
    """The body of a probe that answered 200 (it may say why it is degraded), or None."""
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            return response.read().decode(errors="replace") if response.status == 200 else None
    except OSError:
        return None


def handler(metrics_urls: Callable[[], list[str]], live: Callable[[], bool], ready: Callable[[], str | None]) -> type:
    """The supervisor's HTTP handler: merged /metrics, and /healthz, /readyz over every process
    (`ready`: the body to answer 200 with, or None for 503)."""

    class Handler(BaseHTTPRequestHandler):
        timeout = 10.0

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/healthz", "/readyz"):
                answer = ("ok\n" if live() else None) if path == "/healthz" else ready()
                body, status = (answer.encode(), 200) if answer is not None else (b"unavailable\n", 503)
                content_type = "text/plain; charset=utf-8"
            else:
                body, status, content_type = exposition(metrics_urls()), 200, "text/plain; version=0.0.4; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes every few seconds would drown the log."""

    return Handler
