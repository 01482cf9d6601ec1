"""The soak's checker: what it counts, and how an answer is judged against the reference model.

The load drivers decide what to send; this module decides whether what came back is right.
`Tallies.wrong_count` is the verdict — correct requests answered wrongly, or bad ones
answered with the wrong code — and every comparison with the model goes through `Checker`,
so "right" means one thing everywhere.

An answer is right when its probabilities are within 1e-5 of tests/reference.py's (the model
fed the history alone, float32, the whole history in one nn.LSTM call): the equivalence
contract the test suite holds the server to. But float32 evaluations of a long history are not
all within 1e-5 of each other: the soak met a 381-token history where the reference is 7.0e-6
below the float64 value and the server 9.6e-6 above it, and offline, with no server at all,
the float32 reference strays 1.2e-5 from float64 at about one chunk end in 1,600 of 600-token
histories (a state where the dynamics amplify rounding). So an answer outside 1e-5 of the
reference is judged again against the same model in float64:

- within ROUNDING_TAIL (1e-4) of it, the difference is float32 rounding, not the server's: it
  is counted apart (`Tallies.tail`), listed with its three figures in the report, and fails the
  run only when such answers are too many (soak_report.MAX_TAIL_FRACTION) to be a tail;
- beyond it, the answer is wrong. A lost, stale or mixed-up state is off by 1e-3 to 1e-1, and
  even state stored in float16 reaches 2e-2 (README, `--state-dtype`).
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import torch

from seqpredict.models import CharRNN
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.reference import TOLERANCE, reference_probabilities

OK = grpc.StatusCode.OK
CODE = {c.value[0]: c for c in grpc.StatusCode}
# The first few wrong answers are kept verbatim for the report; the rest are only counted.
WRONG_EXAMPLES = 50
# How far from the float64 model an answer outside the float32 reference's 1e-5 may be and still count as
# float32 rounding: 5x the largest such difference measured (2.0e-5), 100x below what a wrong state gives.
ROUNDING_TAIL = 1e-4


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
    tail_count: int = 0  # answers outside 1e-5 of the reference, within ROUNDING_TAIL of the float64 model
    tail: list[str] = field(default_factory=list)  # the first few, with their figures

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

    def rounding_tail(self, what: str) -> None:
        self.tail_count += 1
        if len(self.tail) < WRONG_EXAMPLES:
            self.tail.append(what)


@torch.inference_mode()
def exact_probabilities(model64: CharRNN, tokens: Sequence[int]) -> torch.Tensor:
    """tests/reference.py's reference_probabilities with the model in float64: (len(tokens) + 1, V)."""
    state = model64.zero_state(1, torch.float64)
    first = torch.softmax(model64.next_logits(state), dim=-1)  # (1, V) from the zero state
    if not tokens:
        return first
    logits, _ = model64(torch.tensor([list(tokens)]), state)  # (1, T, V)
    return torch.cat([first, torch.softmax(logits[0], dim=-1)])


class History:
    """The model's next-token distributions after each prefix of one history (row p: after p tokens):
    the float32 reference, and the float64 one computed only if an answer misses the first."""

    def __init__(self, tokens: list[int], rows: torch.Tensor, model64: CharRNN | None) -> None:
        self.tokens, self.rows, self.model64 = tokens, rows, model64
        self._exact: torch.Tensor | None = None

    async def exact(self) -> torch.Tensor:
        if self._exact is None:
            self._exact = await asyncio.to_thread(exact_probabilities, self.model64, self.tokens)  # type: ignore[arg-type]
        return self._exact


class Checker:
    """Compares served probabilities with the model fed alone; every mismatch is a wrong answer."""

    def __init__(self, model: CharRNN, tallies: Tallies) -> None:
        self.model = model
        self.model64 = copy.deepcopy(model).double().eval()
        self.tallies = tallies

    async def history(self, tokens: list[int]) -> History:
        """The reference for `tokens`; off the event loop, so the load keeps flowing while it runs."""
        rows = await asyncio.to_thread(reference_probabilities, self.model, tokens)
        return History(list(tokens), rows, self.model64)

    async def top(self, history: History, position: int, top: Sequence[pb.TokenProbability], where: str) -> None:
        """One top-k list against the distribution after `position` tokens of the history."""
        await self.tops(history, [position], [top], where)

    async def tops(
        self, history: History, positions: list[int], tops: Sequence[Sequence[pb.TokenProbability]], where: str
    ) -> None:
        """Many top-k lists at once (answer i at positions[i]), vectorised: checking all 10,000 answers of a
        pipeline costs milliseconds."""
        self.tallies.checked += len(tops)
        missed = mismatched_tops(tops, history.rows[positions])
        if not missed:
            return
        exact = (await history.exact())[[positions[i] for i in missed]]
        still = set(mismatched_tops([tops[i] for i in missed], exact, ROUNDING_TAIL))
        for j, i in enumerate(missed):
            served = [(t.id, round(t.probability, 7)) for t in tops[i]]
            k = max(len(served), 1)
            f32 = history.rows[positions[i]].topk(k)
            f64 = exact[j].topk(k)
            what = (
                f"{where}: answer {i} (after {positions[i]} tokens) served {served}; float32 reference "
                f"{_pairs(f32)}, float64 {_pairs(f64)}"
            )
            (self.tallies.wrong_answer if j in still else self.tallies.rounding_tail)(what)

    async def probability(self, history: History, position: int, token: int, served: float, where: str) -> None:
        """One sampled token's probability (Generate) against the distribution after `position` tokens."""
        self.tallies.checked += 1
        f32 = history.rows[position][token].item()
        if abs(served - f32) <= TOLERANCE:
            return
        f64 = (await history.exact())[position][token].item()
        what = f"{where}: token id {token} probability {served:.7f}, float32 reference {f32:.7f}, float64 {f64:.7f}"
        (self.tallies.rounding_tail if abs(served - f64) <= ROUNDING_TAIL else self.tallies.wrong_answer)(what)


def _pairs(best: torch.return_types.topk) -> list[tuple[int, float]]:
    return list(zip(best.indices.tolist(), [round(p, 7) for p in best.values.tolist()], strict=True))


def mismatched_tops(
    tops: Sequence[Sequence[pb.TokenProbability]], rows: torch.Tensor, tolerance: float = TOLERANCE
) -> list[int]:
    """Indices of the top-k lists that differ from their reference rows (N, V), by tests/reference.py's
    `assert_top_matches` rule: the served probabilities are the k best of the row, and each equals its own
    id's, within `tolerance`. An empty list, a list of another length than the first, or an id outside the
    vocabulary is a mismatch."""
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
        off = outside | ((served - best).abs() > tolerance).any(dim=1) | ((served - own).abs() > tolerance).any(dim=1)
        bad |= {shaped[j] for j in off.nonzero().flatten().tolist()}
    return sorted(bad)
