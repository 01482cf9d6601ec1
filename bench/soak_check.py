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
from dataclasses import dataclass, field

import grpc
import torch

from seqpredict.models import CharRNN
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.reference import assert_top_matches, reference_probabilities

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
    wrong_count: int = 0
    wrong: list[str] = field(default_factory=list)  # the first few, for the report

    def outcome(self, kind: str, code: grpc.StatusCode) -> None:
        self.outcomes[(kind, code.name)] += 1

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
