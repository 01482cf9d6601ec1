"""The soak's checker: what it counts, and how an answer is judged against the reference model.

The load drivers decide what to send; this module decides whether what came back is right.
`Tallies.wrong_count` is the verdict — correct requests answered wrongly, or bad ones
answered with the wrong code — and every comparison with the model goes through `Checker`,
so "right" means one thing everywhere: tests/reference.py within 1e-5, the equivalence
contract the test suite holds the server to.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import torch

from seqpredict.models import CharRNN
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.reference import TOLERANCE, assert_top_matches, reference_probabilities

OK = grpc.StatusCode.OK
CODE = {c.value[0]: c for c in grpc.StatusCode}
# The first few wrong answers are kept verbatim for the report; the rest are only counted.
WRONG_EXAMPLES = 50


def code_of(answer: pb.PredictResponse) -> grpc.StatusCode:
    """The status of one in-band answer on a Predict stream."""
    return CODE[answer.error.code] if answer.HasField("error") else OK


@dataclass
class Tallies:
    """Everything the soak counts; `wrong` is the verdict: correct requests answered wrongly."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (call kind, status name)
    checked: int = 0  # answers compared with the reference
    losses: Counter[str] = field(default_factory=Counter)  # how tracked sessions learned they were lost
    events: Counter[str] = field(default_factory=Counter)  # what drivers did: "pipeline/completed", ...
    series: dict[str, list[float]] = field(default_factory=dict)  # values for the report: seconds per pipeline, ...
    wrong_count: int = 0
    wrong: list[str] = field(default_factory=list)  # the first few, for the report

    def outcome(self, kind: str, code: grpc.StatusCode) -> None:
        self.outcomes[(kind, code.name)] += 1

    def event(self, what: str, n: int = 1) -> None:
        self.events[what] += n

    def record(self, what: str, value: float) -> None:
        self.series.setdefault(what, []).append(value)

    def wrong_answer(self, what: str) -> None:
        self.wrong_count += 1
        if len(self.wrong) < WRONG_EXAMPLES:
            self.wrong.append(what)


class Checker:
    """Compares served probabilities with the model fed alone; every mismatch is a wrong answer."""

    def __init__(self, model: CharRNN, tallies: Tallies) -> None:
        self.model = model
        self.tallies = tallies

    async def reference(self, tokens: list[int]) -> torch.Tensor:
        """(len(tokens) + 1, V); off the event loop, so the load keeps flowing while it runs."""
        return await asyncio.to_thread(reference_probabilities, self.model, tokens)

    def top(self, top: list[pb.TokenProbability], row: torch.Tensor, where: str) -> None:
        """One top-k list against the reference's distribution at that position."""
        self.tallies.checked += 1
        try:
            assert_top_matches(top, row, where)
        except AssertionError as exc:
            self.tallies.wrong_answer(str(exc))

    def tops(self, tops: Sequence[Sequence[pb.TokenProbability]], rows: torch.Tensor, where: str) -> None:
        """Many top-k lists at once (row i of `rows` is the distribution answer i must match): the same
        rule as `top`, vectorised, so checking all 10,000 answers of a pipeline costs milliseconds."""
        for i in mismatched_tops(tops, rows):
            served = [(t.id, round(t.probability, 7)) for t in tops[i]]
            expected = rows[i].topk(max(len(served), 1))
            best = list(zip(expected.indices.tolist(), [round(p, 7) for p in expected.values.tolist()], strict=True))
            self.tallies.wrong_answer(f"{where}: answer {i} served {served}, reference {best}")
        self.tallies.checked += len(tops)


def mismatched_tops(tops: Sequence[Sequence[pb.TokenProbability]], rows: torch.Tensor) -> list[int]:
    """Indices of the top-k lists that differ from their reference rows (N, V), by `assert_top_matches`'s
    rule: the served probabilities are the k best of the row, and each equals its own id's, within TOLERANCE.
    An empty list, a list of another length than the first, or an id outside the vocabulary is a mismatch."""
    if not tops:
        return []
    k, vocab = len(tops[0]), rows.shape[1]
    shaped = [i for i, top in enumerate(tops) if k > 0 and len(top) == k]
    bad = set(range(len(tops))) - set(shaped)
    if shaped:
        ids = torch.tensor([[t.id for t in tops[i]] for i in shaped])  # (N, k)
        served = torch.tensor([[t.probability for t in tops[i]] for i in shaped])  # (N, k)
        chosen = rows[shaped]  # (N, V)
        outside = ((ids < 0) | (ids >= vocab)).any(dim=1)  # (N,)
        own = chosen.gather(1, ids.clamp(0, vocab - 1))  # (N, k): the reference's probability of each served id
        best = chosen.topk(k, dim=-1).values  # (N, k)
        off = outside | ((served - best).abs() > TOLERANCE).any(dim=1) | ((served - own).abs() > TOLERANCE).any(dim=1)
        bad |= {shaped[j] for j in off.nonzero().flatten().tolist()}
    return sorted(bad)
