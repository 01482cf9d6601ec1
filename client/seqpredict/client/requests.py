"""The protobuf boundary of feeding and generating: requests built from what the caller asks for,
answers matched back. Shared by both client halves (the session-state operations: `session_ops.py`).

Requests and answers are paired here because an answer only makes sense with its request
(whether all_steps or score was asked, which session it was for).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from seqpredict.client.errors import SeqpredictError, ServerError, from_request_error
from seqpredict.client.ranges import UINT64, check, check_request_numbers
from seqpredict.client.types import Prediction
from seqpredict.v1 import seqpredict_pb2 as pb

T = TypeVar("T")

# Text (encoded by the server with the model's character vocabulary) or token ids.
Tokens = str | Sequence[int]


@dataclass(frozen=True)
class FeedRequest:
    """One feed with its options, for `Session.stream` and `Client.predict_many`.

    A plain str or list of ids stands for `FeedRequest(input)` with default options.
    """

    input: Tokens = ()
    top_k: int | None = None  # candidates to return; None: the server's default (5)
    all_steps: bool = False  # also return the top-k after every input token
    reset: bool = False  # start from the zero state before feeding
    end: bool = False  # release the session after answering
    expected_position: int | None = None  # fail with PositionMismatch unless the session is here
    expected_incarnation: int | None = None  # ... and is this history of it (0: must not exist)
    score: bool = False  # also return each token's log-probability under the state before it

    @property
    def num_tokens(self) -> int:
        """Tokens this feed consumes: one per character, since vocabularies are character-level."""
        return len(self.input)


FeedInput = FeedRequest | Tokens


def as_feed(item: FeedInput) -> FeedRequest:
    """A FeedRequest for a FeedRequest, a str or a sequence of token ids."""
    if isinstance(item, FeedRequest):
        return item
    if isinstance(item, str | Sequence) and not isinstance(item, bytes | bytearray):
        return FeedRequest(item)
    raise TypeError(f"expected str, a sequence of token ids or FeedRequest, got {type(item).__name__}")


# (expected_position, expected_incarnation) to send; None leaves either unchecked.
Guard = tuple[int | None, int | None]


def predict_request(session_id: str, feed: FeedRequest, guard: Guard, request_id: int = 0) -> pb.PredictRequest:
    """`guard` is what to send (the feed's own, or the strict session's)."""
    check_request_numbers(
        tokens=feed.input, top_k=feed.top_k, expected_position=guard[0], expected_incarnation=guard[1]
    )
    req = pb.PredictRequest(
        session_id=session_id,
        all_steps=feed.all_steps,
        reset=feed.reset,
        end=feed.end,
        request_id=request_id,
        score=feed.score,
    )
    _set_input(req, "tokens", "text", feed.input)
    if feed.top_k is not None:
        req.top_k = feed.top_k
    set_guard(req, guard)
    return req


def set_guard(req: Any, guard: Guard) -> None:
    """Put the guard on any request with the two optional fields (predict, generate, fork, export).

    Range-checked here for every kind of request: protobuf would refuse a negative or 65-bit
    value with a bare ValueError naming no field.
    """
    position, incarnation = guard
    check("expected_position", position, UINT64)
    check("expected_incarnation", incarnation, UINT64)
    if position is not None:
        req.expected_position = position
    if incarnation is not None:
        req.expected_incarnation = incarnation


@dataclass(frozen=True)
class GenerateOptions:
    """Sampling options of one Generate call; None leaves the server's default."""

    max_tokens: int
    prompt: Tokens | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    reset: bool = False
    end: bool = False
    expected_position: int | None = None
    expected_incarnation: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a lone string would otherwise become one stop string per character
            raise TypeError("stop must be a sequence of strings, not a str")
        object.__setattr__(self, "stop", tuple(self.stop))


def generate_request(session_id: str, opts: GenerateOptions, guard: Guard) -> pb.GenerateRequest:
    check_request_numbers(
        tokens=opts.prompt or (),
        top_k=opts.top_k,
        max_tokens=opts.max_tokens,
        seed=opts.seed,
        expected_position=guard[0],
        expected_incarnation=guard[1],
    )
    req = pb.GenerateRequest(
        session_id=session_id, max_tokens=opts.max_tokens, stop=list(opts.stop), reset=opts.reset, end=opts.end
    )
    if opts.prompt is not None:
        _set_input(req, "prompt_tokens", "prompt_text", opts.prompt)
    for name in ("temperature", "top_k", "top_p", "seed"):
        value = getattr(opts, name)
        if value is not None:
            setattr(req, name, value)
    set_guard(req, guard)
    return req


def _set_input(req: pb.PredictRequest | pb.GenerateRequest, ids_field: str, text_field: str, value: Tokens) -> None:
    if isinstance(value, str):
        setattr(req, text_field, value)
    else:
        getattr(req, ids_field).extend(int(t) for t in value)


def many_request(requests: Iterable[tuple[str, FeedInput]]) -> tuple[pb.PredictManyRequest, list[FeedRequest]]:
    """One PredictMany message for (session_id, input) pairs, and the feeds to match its answers with."""
    feeds: list[FeedRequest] = []
    message = pb.PredictManyRequest()
    for i, (session_id, item) in enumerate(requests):
        feed = as_feed(item)
        feeds.append(feed)
        guard = (feed.expected_position, feed.expected_incarnation)
        message.requests.append(predict_request(session_id, feed, guard, request_id=i))
    return message, feeds


def answer(resp: pb.PredictResponse, feed: FeedRequest) -> Prediction | SeqpredictError:
    """A response as a Prediction, or the exception its in-band error stands for."""
    if resp.HasField("error"):
        return from_request_error(resp.error.code, resp.error.message, resp.position, resp.session_id, resp.incarnation)
    return Prediction.from_pb(resp, all_steps=feed.all_steps, score=feed.score)


def answers(reply: pb.PredictManyResponse, feeds: list[FeedRequest]) -> list[Prediction | SeqpredictError]:
    if len(reply.responses) != len(feeds):
        raise ServerError(f"sent {len(feeds)} requests in one message, got {len(reply.responses)} answers")
    return [answer(resp, feed) for resp, feed in zip(reply.responses, feeds, strict=True)]


def only(messages: list[T]) -> T:
    """The single answer of a one-request stream; anything else is a server bug, not a crash here."""
    if len(messages) != 1:
        raise ServerError(f"expected exactly one answer, got {len(messages)}")
    return messages[0]
