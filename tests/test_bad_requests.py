"""Bad requests, through the real server: each field and each way it can be wrong (issue 5).

Each row asserts the documented status code (in-band `PredictResponse.error` on Predict, the
RPC status elsewhere), that the failure's counter moved by exactly the right amount, that the
server is still SERVING, and that bystander sessions fed before, during and after the bad input
still answer exactly as the reference — a bad request hurts nobody but its sender.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from seqpredict.models import Vocabulary
from seqpredict.server.errors import code_name
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.badinput import (
    DEFAULT_MAX_GENERATE,
    DEFAULT_MAX_TOKENS,
    FAILED_PRECONDITION,
    INVALID,
    LIMITED,
    NOT_FOUND,
    number,
)
from tests.bystanders import (
    Bystanders,
    BystanderStream,
    Metrics,
    assert_counters_moved,
    assert_serving,
    handled_total,
    rejected_total,
    requests_total,
    unique_id,
)
from tests.conftest import SERVER_SHAPES, RunningServer

# -- Predict: answered in-band, the stream goes on ----------------------------------------------------------


@dataclass(frozen=True)
class BadPredict:
    """A bad PredictRequest. `fields(live, V)` builds it; `live` is a bystander's session id, so a
    bad request aimed at a live session is shown to leave that session untouched."""

    fields: Callable[[str, int], dict[str, Any]]
    message: tuple[str, ...]  # fragments the error message must contain ({V}: the vocabulary size)
    code: grpc.StatusCode = INVALID
    limit: str | None = None  # the seqpredict_rejected_total{limit} it counts under, if any
    server: str = "server"  # fixture name: the default server, or `limited`


def _on(session_id: str, **fields: Any) -> dict[str, Any]:
    return {"session_id": session_id, **fields}


BAD_PREDICTS: dict[str, BadPredict] = {
    "session-id-empty": BadPredict(lambda live, V: _on("", text="a"), ("session_id", "got 0 characters")),
    "session-id-129-chars": BadPredict(lambda live, V: _on("a" * 129, text="a"), ("got 129 characters",)),
    "session-id-space": BadPredict(lambda live, V: _on("a b", text="a"), ("session_id 'a b'", "[A-Za-z0-9._:-]")),
    "session-id-slash": BadPredict(lambda live, V: _on("users/7", text="a"), ("session_id",)),
    "session-id-unicode": BadPredict(lambda live, V: _on("séance", text="a"), ("session_id",)),
    "session-id-trailing-newline": BadPredict(lambda live, V: _on("abc\n", text="a"), ("session_id",)),
    "session-id-nul": BadPredict(lambda live, V: _on("ab\x00c", text="a"), ("session_id",)),
    "token-negative": BadPredict(lambda live, V: _on(live, tokens=[5, -1]), ("token -1 at index 1", "[0, {V})")),
    "token-equals-vocab-size": BadPredict(lambda live, V: _on(live, tokens=[V]), ("token {V} at index 0",)),
    "token-int32-max": BadPredict(lambda live, V: _on(live, tokens=[1, 2, 2**31 - 1]), ("token 2147483647",)),
    "token-int32-min": BadPredict(lambda live, V: _on(live, tokens=[-(2**31)]), ("token -2147483648",)),
    "text-unknown-character": BadPredict(lambda live, V: _on(live, text="ab€cd"), ("'€'", "position 2")),
    "text-tab": BadPredict(lambda live, V: _on(live, text="hello\tworld"), ("'\\t'", "position 5")),
    "tokens-and-text": BadPredict(lambda live, V: _on(live, tokens=[1], text="a"), ("not both",)),
    "top-k-zero": BadPredict(lambda live, V: _on(live, text="a", top_k=0), ("top_k", "got 0")),
    "top-k-vocab-plus-one": BadPredict(lambda live, V: _on(live, text="a", top_k=V + 1), ("top_k", "got {V1}")),
    "top-k-uint32-max": BadPredict(lambda live, V: _on(live, top_k=2**32 - 1), ("got 4294967295",)),
    # reset/end on a bad request must not be applied: the bystander goes on from where it was.
    "bad-token-with-reset-and-end": BadPredict(
        lambda live, V: _on(live, tokens=[V], reset=True, end=True), ("outside the vocabulary",)
    ),
    "unknown-character-with-reset": BadPredict(lambda live, V: _on(live, text="x~", reset=True), ("'~'",)),
    "too-many-tokens-as-ids": BadPredict(
        lambda live, V: _on(live, tokens=[1] * 257),
        ("257 tokens", "at most 256"),
        limit="tokens_per_request",
        server="limited",
    ),
    "too-many-tokens-as-text": BadPredict(
        lambda live, V: _on(live, text="a" * 257), ("257 tokens",), limit="tokens_per_request", server="limited"
    ),
    "too-many-tokens-with-end": BadPredict(
        lambda live, V: _on(live, tokens=[0] * 300, end=True),
        ("300 tokens",),
        limit="tokens_per_request",
        server="limited",
    ),
}


def _predict_many(stub: pb_grpc.SequencePredictorStub, messages: list[list[pb.PredictRequest]]) -> list:
    answers = stub.PredictMany(iter(pb.PredictManyRequest(requests=m) for m in messages), timeout=60)
    return [r for answer in answers for r in answer.responses]


def _predict(stub: pb_grpc.SequencePredictorStub, messages: list[list[pb.PredictRequest]]) -> list:
    return list(stub.Predict(iter([r for m in messages for r in m]), timeout=60))


TRANSPORTS = {"Predict": _predict, "PredictMany": _predict_many}


@pytest.mark.parametrize("shape", SERVER_SHAPES)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", BAD_PREDICTS.values(), ids=BAD_PREDICTS.keys())
def test_bad_predict_is_answered_in_band_and_the_stream_goes_on(
    request: pytest.FixtureRequest,
    case: BadPredict,
    transport: str,
    shape: str,
    bystanders: Bystanders,
    vocab: Vocabulary,
) -> None:
    """Two copies of the bad request between three bystander rounds on one stream (or PredictMany
    message): each copy gets its own error answer, and the stream and its other sessions go on."""
    server: RunningServer = request.getfixturevalue(f"{case.server}_{shape}")
    stub, V = server.stub(), len(vocab)
    bad = [pb.PredictRequest(**case.fields(bystanders.ids[0], V), request_id=i) for i in (1, 2)]
    rounds = [bystanders.requests() for _ in range(3)]
    before = Metrics(server.metrics_url)

    # Bystanders before, between and after two copies of the bad request, on the same stream.
    responses = TRANSPORTS[transport](stub, [[*rounds[0], bad[0]], [*rounds[1], bad[1]], rounds[2]])

    n = len(bystanders.members)
    assert len(responses) == 3 * n + 2, "exactly one answer per request"
    bystanders.check(responses[:n], "before")
    bystanders.check(responses[n + 1 : 2 * n + 1], "between")
    bystanders.check(responses[2 * n + 2 :], "after")
    for request_id, answer in zip((1, 2), (responses[n], responses[2 * n + 1]), strict=True):
        assert answer.request_id == request_id and answer.session_id == bad[0].session_id
        assert answer.error.code == number(case.code), answer.error
        for fragment in case.message:
            assert fragment.format(V=V, V1=V + 1) in answer.error.message, answer.error.message
        assert not answer.next and not answer.steps and not answer.created and not answer.ended, "nothing computed"
    expected = {requests_total("predict", code_name(number(case.code))): 2, handled_total(transport, "OK"): 1}
    if case.limit:
        expected[rejected_total(case.limit)] = 2
    assert_counters_moved(server.metrics_url, before, expected)
    assert_serving(server.address)
    bystanders.round(server.stub(), "on a new stream")


BOUNDARIES: dict[str, Callable[[str, int], dict[str, Any]]] = {
    "session-id-128-chars-every-allowed-character": lambda live, V: _on(("AZaz09._:-" * 13)[:128], tokens=[0, V - 1]),
    "tokens-0-and-vocab-size-minus-1": lambda live, V: _on(live, tokens=[0, V - 1]),
    "top-k-1": lambda live, V: _on(live, top_k=1),
    "top-k-vocab-size": lambda live, V: _on(live, top_k=V),
    "exactly-max-tokens": lambda live, V: _on(live, tokens=[3] * LIMITED["max_tokens_per_request"]),
    "empty-input": lambda live, V: _on(live),
}


@pytest.mark.parametrize("fields", BOUNDARIES.values(), ids=BOUNDARIES.keys())
def test_values_at_the_limits_are_accepted(limited: RunningServer, vocab: Vocabulary, fields: Callable) -> None:
    """The checks above refuse exactly what is out of range, not one value more."""
    request = pb.PredictRequest(**fields(unique_id("boundary"), len(vocab)))
    (answer,) = list(limited.stub().Predict(iter([request]), timeout=60))
    assert not answer.HasField("error"), answer.error
    assert answer.position == len(request.tokens) and len(answer.next) == (request.top_k or 5)


# -- expected_position -----------------------------------------------------------------------------------

EXPECTED_POSITIONS: dict[str, tuple[Callable[[int], int], dict[str, Any]]] = {
    "ahead": (lambda p: p + 5, {}),
    "behind": (lambda p: p - 1, {}),
    "zero-on-a-live-session": (lambda p: 0, {"reset": True}),  # checked before reset, so reset is not applied
    "ahead-with-reset-and-end": (lambda p: p + 1, {"reset": True, "end": True}),
    "uint64-max": (lambda p: 2**64 - 1, {}),
}


@pytest.mark.parametrize("expect, extra", EXPECTED_POSITIONS.values(), ids=EXPECTED_POSITIONS.keys())
def test_expected_position_mismatch_computes_nothing(
    server: RunningServer, bystanders: Bystanders, expect: Callable[[int], int], extra: dict[str, Any]
) -> None:
    """The documented way a client learns its session moved: FAILED_PRECONDITION with the actual
    position, checked before reset/end, and nothing applied (the live session goes on from there)."""
    stub = server.stub()
    bystanders.round(stub, "to give the live session a position")
    live = bystanders.members[0]
    first = bystanders.requests()
    actual = live.planned_position  # where the live session is when the bad request is reached
    bad = pb.PredictRequest(session_id=live.session_id, text="xyz", expected_position=expect(actual), **extra)
    last = bystanders.requests()
    before = Metrics(server.metrics_url)

    responses = list(stub.Predict(iter([*first, bad, *last]), timeout=60))

    n = len(first)
    bystanders.check(responses[:n], "before")
    answer = responses[n]
    assert answer.error.code == number(FAILED_PRECONDITION), answer.error
    assert answer.position == actual and f"position {actual}" in answer.error.message, answer
    assert not answer.next and not answer.created and not answer.ended
    bystanders.check(responses[n + 1 :], "after: the live session kept its state and position")
    assert_counters_moved(server.metrics_url, before, {requests_total("predict", "FailedPrecondition"): 1})
    assert_serving(server.address)


def test_expected_position_on_a_missing_session_does_not_create_it(
    server: RunningServer, bystanders: Bystanders
) -> None:
    """A session that does not exist is at position 0: expecting anything else fails and creates nothing."""
    stub, missing = server.stub(), unique_id("missing")
    stream = BystanderStream(stub, bystanders)
    stream.round("before")
    before = Metrics(server.metrics_url)
    request = pb.PredictRequest(session_id=missing, text="a", expected_position=3, reset=True)
    (answer,) = list(stub.Predict(iter([request]), timeout=60))
    assert answer.error.code == number(FAILED_PRECONDITION) and answer.position == 0 and not answer.created
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSession(pb.GetSessionRequest(session_id=missing), timeout=30)
    assert err.value.code() == NOT_FOUND
    stream.round("after")
    stream.close()
    assert_counters_moved(server.metrics_url, before, {requests_total("predict", "FailedPrecondition"): 1})
    assert_serving(server.address)


def test_generate_with_a_wrong_expected_position_is_failed_precondition_with_the_position(
    server: RunningServer, bystanders: Bystanders
) -> None:
    """On Generate the mismatch is the RPC status, with the actual position in trailing metadata."""
    stream = BystanderStream(server.stub(), bystanders)
    stream.round("before")
    live = bystanders.members[0]
    before = Metrics(server.metrics_url)
    request = pb.GenerateRequest(
        session_id=live.session_id, prompt_text="abc", max_tokens=5, expected_position=live.fed + 2
    )
    with pytest.raises(grpc.RpcError) as err:
        list(server.stub().Generate(request, timeout=60))
    assert err.value.code() == FAILED_PRECONDITION
    assert ("seqpredict-position", str(live.fed)) in tuple(err.value.trailing_metadata() or ())
    stream.round("after: nothing was generated or fed")
    stream.close()
    assert_counters_moved(
        server.metrics_url,
        before,
        {requests_total("generate", "FailedPrecondition"): 1, handled_total("Generate", "FailedPrecondition"): 1},
    )
    assert_serving(server.address)


# -- Generate: the RPC status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadGenerate:
    """A bad GenerateRequest: the fields that differ from a valid one (on a live bystander session)."""

    fields: Callable[[str, int], dict[str, Any]]
    message: tuple[str, ...]
    limit: str | None = None


def _gen(**fields: Any) -> Callable[[str, int], dict[str, Any]]:
    return lambda live, V: {"session_id": live, "max_tokens": 5, **fields}


def _gen_v(build: Callable[[int], dict[str, Any]]) -> Callable[[str, int], dict[str, Any]]:
    return lambda live, V: {"session_id": live, "max_tokens": 5, **build(V)}


BAD_GENERATES: dict[str, BadGenerate] = {
    "temperature-nan": BadGenerate(_gen(temperature=math.nan), ("temperature", "nan")),
    "temperature-negative": BadGenerate(_gen(temperature=-0.5), ("temperature", "[0, 100]")),
    "temperature-just-over-100": BadGenerate(_gen(temperature=100.5), ("temperature",)),
    "temperature-huge": BadGenerate(_gen(temperature=1e30), ("temperature",)),
    "temperature-infinite": BadGenerate(_gen(temperature=math.inf), ("temperature", "inf")),
    "top-p-zero": BadGenerate(_gen(top_p=0.0), ("top_p", "(0, 1]")),
    "top-p-negative": BadGenerate(_gen(top_p=-0.25), ("top_p",)),
    "top-p-over-one": BadGenerate(_gen(top_p=1.5), ("top_p",)),
    "top-p-nan": BadGenerate(_gen(top_p=math.nan), ("top_p",)),
    "top-p-infinite": BadGenerate(_gen(top_p=math.inf), ("top_p",)),
    "top-k-zero": BadGenerate(_gen(top_k=0), ("top_k",)),
    "top-k-vocab-plus-one": BadGenerate(_gen_v(lambda V: {"top_k": V + 1}), ("top_k",)),
    "max-tokens-zero": BadGenerate(_gen(max_tokens=0), ("max_tokens", f"between 1 and {DEFAULT_MAX_GENERATE}")),
    "max-tokens-over-the-limit": BadGenerate(
        _gen(max_tokens=DEFAULT_MAX_GENERATE + 1), ("max_tokens",), limit="generate_tokens"
    ),
    "max-tokens-uint32-max": BadGenerate(_gen(max_tokens=2**32 - 1), ("4294967295",), limit="generate_tokens"),
    "stop-17-strings": BadGenerate(_gen(stop=["a"] * 17), ("at most 16 stop strings",)),
    "stop-string-65-chars": BadGenerate(_gen(stop=["a" * 65]), ("1-64 characters", "got 65")),
    "stop-string-empty": BadGenerate(_gen(stop=["x", ""]), ("got 0",)),
    "session-id-empty": BadGenerate(lambda live, V: {"session_id": "", "max_tokens": 5}, ("session_id",)),
    "session-id-space": BadGenerate(lambda live, V: {"session_id": "a b", "max_tokens": 5}, ("session_id",)),
    "session-id-129-chars": BadGenerate(lambda live, V: {"session_id": "g" * 129, "max_tokens": 5}, ("129",)),
    "session-id-unicode": BadGenerate(lambda live, V: {"session_id": "ünï", "max_tokens": 5}, ("session_id",)),
    "prompt-unknown-character": BadGenerate(_gen(prompt_text="KING€"), ("prompt text", "'€'", "position 4")),
    "prompt-token-negative": BadGenerate(_gen(prompt_tokens=[-3]), ("prompt token -3",)),
    "prompt-token-out-of-range": BadGenerate(_gen_v(lambda V: {"prompt_tokens": [0, V]}), ("at index 1",)),
    "prompt-tokens-and-text": BadGenerate(_gen(prompt_tokens=[1], prompt_text="a"), ("not both",)),
    "prompt-too-long": BadGenerate(
        _gen(prompt_tokens=[0] * (DEFAULT_MAX_TOKENS + 1)), ("prompt has 8193 tokens",), limit="tokens_per_request"
    ),
    "bad-temperature-with-reset-and-end": BadGenerate(
        _gen(temperature=-1.0, reset=True, end=True, prompt_text="abc"), ("temperature",)
    ),
}


@pytest.mark.parametrize("case", BAD_GENERATES.values(), ids=BAD_GENERATES.keys())
def test_bad_generate_fails_with_invalid_argument(
    server: RunningServer, bystanders: Bystanders, vocab: Vocabulary, case: BadGenerate
) -> None:
    """Refused before anything is queued: no token generated, the target session (a bystander) unchanged."""
    stream = BystanderStream(server.stub(), bystanders)
    stream.round("before")
    before = Metrics(server.metrics_url)
    answers: list[pb.GenerateResponse] = []
    with pytest.raises(grpc.RpcError) as err:
        answers.extend(server.stub().Generate(pb.GenerateRequest(**case.fields(bystanders.ids[0], len(vocab)))))
    assert err.value.code() == INVALID, err.value.details()
    for fragment in case.message:
        assert fragment in err.value.details(), err.value.details()
    assert not answers, "nothing generated"
    stream.round("after, on the stream that stayed open: nothing fed, reset or ended")
    stream.close()
    expected = {requests_total("generate", "InvalidArgument"): 1, handled_total("Generate", "InvalidArgument"): 1}
    if case.limit:
        expected[rejected_total(case.limit)] = 1
    assert_counters_moved(server.metrics_url, before, expected)
    assert_serving(server.address)


# -- GetSession / EndSession ---------------------------------------------------------------------------


def _ended_session(stub: pb_grpc.SequencePredictorStub) -> str:
    session = unique_id("ended")
    list(stub.Predict(iter([pb.PredictRequest(session_id=session, text="abc", end=True)]), timeout=60))
    return session


def _ended_by_end_session(stub: pb_grpc.SequencePredictorStub) -> str:
    session = unique_id("ended")
    list(stub.Predict(iter([pb.PredictRequest(session_id=session, text="abc")]), timeout=60))
    stub.EndSession(pb.EndSessionRequest(session_id=session), timeout=60)
    return session


SESSION_OPS: dict[str, tuple[str, Callable[[pb_grpc.SequencePredictorStub], str], grpc.StatusCode]] = {
    "get-unknown": ("GetSession", lambda stub: unique_id("never"), NOT_FOUND),
    "end-unknown": ("EndSession", lambda stub: unique_id("never"), NOT_FOUND),
    "get-after-end-flag": ("GetSession", _ended_session, NOT_FOUND),
    "end-after-end-flag": ("EndSession", _ended_session, NOT_FOUND),
    "end-twice": ("EndSession", _ended_by_end_session, NOT_FOUND),
    "get-empty-id": ("GetSession", lambda stub: "", INVALID),
    "end-empty-id": ("EndSession", lambda stub: "", INVALID),
    "get-id-with-space": ("GetSession", lambda stub: "a b", INVALID),
    "end-129-char-id": ("EndSession", lambda stub: "e" * 129, INVALID),
}


@pytest.mark.parametrize("method, make_id, code", SESSION_OPS.values(), ids=SESSION_OPS.keys())
def test_session_calls_on_missing_or_badly_named_sessions(
    server: RunningServer, bystanders: Bystanders, method: str, make_id: Callable, code: grpc.StatusCode
) -> None:
    """NOT_FOUND for a session that does not exist (never, or no longer); INVALID_ARGUMENT for a bad id."""
    stub = server.stub()
    stream = BystanderStream(stub, bystanders)
    stream.round("before")
    session = make_id(stub)
    before = Metrics(server.metrics_url)
    message = pb.GetSessionRequest if method == "GetSession" else pb.EndSessionRequest
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(message(session_id=session), timeout=60)
    assert err.value.code() == code, err.value.details()
    stream.round("after")
    stream.close()
    expected = {handled_total(method, code_name(number(code))): 1}
    if code == NOT_FOUND:  # a bad id is refused before it reaches the scheduler, where requests_total counts
        expected[requests_total("session", "NotFound")] = 1
    assert_counters_moved(server.metrics_url, before, expected)
    assert_serving(server.address)


# -- ForkSession / ExportSession / ImportSession / ListSessions ----------------------------------------------


def _live(stub: pb_grpc.SequencePredictorStub, text: str = "abc") -> tuple[str, pb.PredictResponse]:
    session = unique_id("live")
    (answer,) = list(stub.Predict(iter([pb.PredictRequest(session_id=session, text=text)]), timeout=60))
    return session, answer


def _blob(stub: pb_grpc.SequencePredictorStub, edit: Callable[[pb.SessionBlob], None] | None = None) -> bytes:
    session, _ = _live(stub)
    data = stub.ExportSession(pb.ExportSessionRequest(session_id=session), timeout=60).blob
    if edit is None:
        return data
    from seqpredict.server.session_blob import _digest

    blob = pb.SessionBlob.FromString(data)
    edit(blob)
    blob.sha256 = _digest(blob)
    return blob.SerializeToString()


def _corrupt(stub: pb_grpc.SequencePredictorStub) -> bytes:
    data = bytearray(_blob(stub))
    data[-40] ^= 0x01
    return bytes(data)


def _moved_on(stub: pb_grpc.SequencePredictorStub) -> pb.ImportSessionRequest:
    session, _ = _live(stub)
    data = stub.ExportSession(pb.ExportSessionRequest(session_id=session), timeout=60).blob
    list(stub.Predict(iter([pb.PredictRequest(session_id=session, text="d")]), timeout=60))
    return pb.ImportSessionRequest(blob=data)


def _page_token(stub: pb_grpc.SequencePredictorStub, prefix: str) -> str:
    for _ in range(2):
        _live(stub)
    return stub.ListSessions(pb.ListSessionsRequest(prefix=prefix, page_size=1), timeout=60).next_page_token


ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
Build = Callable[[pb_grpc.SequencePredictorStub], Any]
STATE_OPS: dict[str, tuple[str, str, Build, grpc.StatusCode]] = {
    "fork-unknown-source": (
        "ForkSession",
        "fork",
        lambda s: pb.ForkSessionRequest(source_session_id=unique_id("never"), target_session_id=unique_id("t")),
        NOT_FOUND,
    ),
    "fork-onto-an-existing-session": (
        "ForkSession",
        "fork",
        lambda s: pb.ForkSessionRequest(source_session_id=_live(s)[0], target_session_id=_live(s)[0]),
        ALREADY_EXISTS,
    ),
    "fork-wrong-incarnation": (
        "ForkSession",
        "fork",
        lambda s: pb.ForkSessionRequest(
            source_session_id=_live(s)[0], target_session_id=unique_id("t"), expected_incarnation=1
        ),
        FAILED_PRECONDITION,
    ),
    "fork-bad-target-id": (
        "ForkSession",
        "fork",
        lambda s: pb.ForkSessionRequest(source_session_id=_live(s)[0], target_session_id="no spaces"),
        INVALID,
    ),
    "fork-onto-itself": (
        "ForkSession",
        "fork",
        lambda s: (lambda sid: pb.ForkSessionRequest(source_session_id=sid, target_session_id=sid))(_live(s)[0]),
        INVALID,
    ),
    "export-unknown": (
        "ExportSession",
        "export",
        lambda s: pb.ExportSessionRequest(session_id=unique_id("n")),
        NOT_FOUND,
    ),
    "export-wrong-position": (
        "ExportSession",
        "export",
        lambda s: pb.ExportSessionRequest(session_id=_live(s)[0], expected_position=99),
        FAILED_PRECONDITION,
    ),
    "export-bad-id": ("ExportSession", "export", lambda s: pb.ExportSessionRequest(session_id=""), INVALID),
    "import-not-a-blob": ("ImportSession", "import", lambda s: pb.ImportSessionRequest(blob=b"\x08\x01junk"), INVALID),
    "import-empty-blob": ("ImportSession", "import", lambda s: pb.ImportSessionRequest(session_id="x"), INVALID),
    "import-corrupt-blob": ("ImportSession", "import", lambda s: pb.ImportSessionRequest(blob=_corrupt(s)), INVALID),
    "import-foreign-fingerprint": (
        "ImportSession",
        "import",
        lambda s: pb.ImportSessionRequest(blob=_blob(s, lambda b: setattr(b, "model_fingerprint", "f" * 64))),
        FAILED_PRECONDITION,
    ),
    "import-other-layout": (
        "ImportSession",
        "import",
        lambda s: pb.ImportSessionRequest(blob=_blob(s, lambda b: b.layout.tensors.pop())),
        INVALID,
    ),
    "import-over-a-session-that-moved-on": ("ImportSession", "import", _moved_on, FAILED_PRECONDITION),
    "import-bad-target-id": (
        "ImportSession",
        "import",
        lambda s: pb.ImportSessionRequest(session_id="bad id", blob=_blob(s)),
        INVALID,
    ),
    "list-bad-page-token": ("ListSessions", "list", lambda s: pb.ListSessionsRequest(page_token="%%%"), INVALID),
    "list-token-of-another-prefix": (
        "ListSessions",
        "list",
        lambda s: pb.ListSessionsRequest(prefix="other", page_token=_page_token(s, "live-")),
        INVALID,
    ),
    "list-bad-prefix": ("ListSessions", "list", lambda s: pb.ListSessionsRequest(prefix="a/b"), INVALID),
}


@pytest.mark.parametrize("method, kind, build, code", STATE_OPS.values(), ids=STATE_OPS.keys())
def test_session_state_operations_refuse_bad_input_and_change_nothing(
    server: RunningServer, bystanders: Bystanders, method: str, kind: str, build: Build, code: grpc.StatusCode
) -> None:
    """Unknown sessions, wrong guards, corrupt or foreign blobs, bad page tokens: each its documented
    code and counter; bystanders (fed before and after) answer exactly as the reference."""
    stub = server.stub()
    stream = BystanderStream(stub, bystanders)
    stream.round("before")
    request = build(stub)
    before = Metrics(server.metrics_url)
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request, timeout=60)
    assert err.value.code() == code, err.value.details()
    stream.round("after")
    stream.close()
    name = code_name(number(code))
    assert_counters_moved(server.metrics_url, before, {handled_total(method, name): 1, requests_total(kind, name): 1})
    assert_serving(server.address)
