"""Bystander sessions and the checks every bad-input case ends with.

A bad request must hurt nobody but its sender. Each case in test_bad_inputs.py therefore
runs alongside a few well-behaved *bystander* sessions that feed a known text in small
chunks (with `expected_position`, so a lost or moved session is caught at once) and whose
every answer is compared with the reference: the session's tokens fed alone through the
model. The same module reads the server's health and Prometheus counters, so each case
can also say "the server is still SERVING" and "the counter for this failure moved".
"""

from __future__ import annotations

import itertools
import queue
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from seqpredict.models import CharRNN, Vocabulary
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.reference import assert_top_matches, reference_probabilities

# Public-domain text the bystanders feed; every character is in the shipped vocabulary.
PASSAGE = (
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n"
    "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n"
    "Now are our brows bound with victorious wreaths;\nOur bruised arms hung up for monuments;\n"
    "Our stern alarums changed to merry meetings,\nOur dreadful marches to delightful measures.\n"
)
# Chunk sizes cycle through single tokens (the fused step) and short prefills (whole sequences).
CHUNKS = (1, 3, 1, 7, 2, 1, 5)
TOP_K = 5


def unique_id(prefix: str) -> str:
    """A session id no other test (or earlier run against the same server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(eq=False)
class Bystander:
    """One well-behaved session with its whole input planned, so its reference is computed once."""

    session_id: str
    tokens: list[int]
    reference: torch.Tensor  # (len(tokens) + 1, V): row p = next-token distribution after p tokens
    fed: int = 0  # tokens the server has confirmed
    _pending: list[int] = field(default_factory=list)  # chunk sizes sent, not yet answered
    _chunks: Iterator[int] = field(default_factory=lambda: itertools.cycle(CHUNKS))

    @property
    def planned_position(self) -> int:
        """The position once every request sent so far is answered."""
        return self.fed + sum(self._pending)

    def request(self, request_id: int = 0) -> pb.PredictRequest:
        start = self.planned_position
        n = next(self._chunks)
        assert start + n <= len(self.tokens), f"{self.session_id}: planned text exhausted; make PASSAGE longer"
        self._pending.append(n)
        return pb.PredictRequest(
            session_id=self.session_id,
            tokens=self.tokens[start : start + n],
            top_k=TOP_K,
            expected_position=start,
            request_id=request_id,
        )

    def check(self, response: pb.PredictResponse, where: str) -> None:
        n = self._pending.pop(0)
        label = f"{where}: bystander {self.session_id}"
        assert response.session_id == self.session_id, f"{label}: answer for {response.session_id!r}"
        assert not response.HasField("error"), f"{label}: {response.error.code} {response.error.message}"
        assert response.position == self.fed + n, f"{label}: position {response.position}, not {self.fed + n}"
        assert response.created == (self.fed == 0), f"{label}: created={response.created} at {self.fed}"
        assert not response.ended, f"{label}: ended"
        assert_top_matches(response.next, self.reference[self.fed + n], label)
        self.fed += n


_PLANS: dict[tuple[int, int], tuple[list[int], torch.Tensor]] = {}


def _planned(model: CharRNN, vocab: Vocabulary, i: int) -> tuple[list[int], torch.Tensor]:
    """Member i's tokens (the passage rotated, so each member's text differs) and their reference, cached."""
    key = (id(model), i)
    if key not in _PLANS:
        ids = vocab.encode(PASSAGE)
        tokens = ids[17 * i :] + ids[: 17 * i]
        _PLANS[key] = (tokens, reference_probabilities(model, tokens))
    tokens, reference = _PLANS[key]
    return list(tokens), reference


class Bystanders:
    """A few bystander sessions fed together, one request each per round."""

    def __init__(self, model: CharRNN, vocab: Vocabulary, count: int = 3, prefix: str = "bystander") -> None:
        self.members = [Bystander(unique_id(f"{prefix}{i}"), *_planned(model, vocab, i)) for i in range(count)]
        self._request_ids = itertools.count(1_000_000)

    @property
    def ids(self) -> list[str]:
        return [m.session_id for m in self.members]

    def requests(self) -> list[pb.PredictRequest]:
        """One request per member (request ids from a range bad requests do not use)."""
        return [m.request(next(self._request_ids)) for m in self.members]

    def check(self, responses: Sequence[pb.PredictResponse], where: str) -> None:
        """Check answers to requests() in order."""
        assert len(responses) == len(self.members), f"{where}: {len(responses)} answers for {len(self.members)}"
        for member, response in zip(self.members, responses, strict=True):
            member.check(response, where)

    def round(self, stub: pb_grpc.SequencePredictorStub, where: str) -> None:
        """One round on a stream of its own."""
        self.check(list(stub.Predict(iter(self.requests()), timeout=60)), where)


class BystanderStream:
    """A Predict stream kept open across a case: rounds go out before, during and after the bad input."""

    _CLOSE = object()

    def __init__(self, stub: pb_grpc.SequencePredictorStub, bystanders: Bystanders) -> None:
        self.bystanders = bystanders
        self._outbox: queue.Queue[object] = queue.Queue()
        self._call = stub.Predict(iter(self._outbox.get, self._CLOSE), timeout=300)

    def round(self, where: str) -> None:
        requests = self.bystanders.requests()
        for request in requests:
            self._outbox.put(request)
        self.bystanders.check([next(self._call) for _ in requests], where)

    def close(self) -> None:
        """Half-close and confirm the stream ends with OK: the bad input elsewhere never touched it."""
        self._outbox.put(self._CLOSE)
        leftover = list(self._call)
        assert not leftover, f"unexpected answers after close: {leftover}"
        assert self._call.code() == grpc.StatusCode.OK, self._call.details()


def health_status(address: str, timeout: float = 10.0) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


def assert_serving(address: str) -> None:
    status = health_status(address)
    assert status == health_pb2.HealthCheckResponse.SERVING, f"health is {status}, not SERVING"


def calls_active(server: object) -> float:
    """Calls in progress that count against --max-streams (health checks do not), from the metrics."""
    return Metrics(server.metrics_url).value("seqpredict_calls_active")  # type: ignore[attr-defined]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for something the server does asynchronously (a cancelled stream's cleanup); generous timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.05)


class Metrics:
    """One scrape of the server's Prometheus endpoint: sample name + labels → value."""

    def __init__(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


@dataclass(frozen=True)
class Counter:
    """A counter series a case expects to move, e.g. Counter("seqpredict_rejected_total", limit="sessions")."""

    name: str
    labels: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, name: str, **labels: str) -> Counter:
        return cls(name, tuple(sorted(labels.items())))

    def read(self, metrics: Metrics) -> float:
        return metrics.value(self.name, **dict(self.labels))

    def __str__(self) -> str:
        return f"{self.name}{{{','.join(f'{k}={v!r}' for k, v in self.labels)}}}"


def requests_total(kind: str, code: str) -> Counter:
    return Counter.of("seqpredict_requests_total", kind=kind, code=code)


def rejected_total(limit: str) -> Counter:
    return Counter.of("seqpredict_rejected_total", limit=limit)


def handled_total(method: str, code: str) -> Counter:
    return Counter.of("grpc_server_handled_total", grpc_method=method, grpc_code=code)


def assert_counters_moved(url: str, before: Metrics, expected: dict[Counter, float], timeout: float = 10.0) -> None:
    """Each counter moved by exactly its expected amount (waiting for handlers that finish after the client)."""
    deadline = time.monotonic() + timeout
    while True:
        after = Metrics(url)
        moved = {c: c.read(after) - c.read(before) for c in expected}
        if moved == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    wrong = {str(c): (moved[c], n) for c, n in expected.items() if moved[c] != n}
    assert not wrong, f"counters moved by (actual, expected): {wrong}"
