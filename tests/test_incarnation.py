"""Session identity: an incarnation, chosen at creation and on reset, fences what position alone cannot."""

from __future__ import annotations

import grpc
import pytest

from seqpredict.client import Client, PositionMismatch
from seqpredict.models import Vocabulary
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.badinput import FAILED_PRECONDITION, number
from tests.bystanders import unique_id
from tests.conftest import RunningServer
from tests.reference import assert_top_matches, reference_probabilities


def feed(stub, session_id: str, text: str = "", **kw) -> pb.PredictResponse:
    (response,) = list(stub.Predict(iter([pb.PredictRequest(session_id=session_id, text=text, **kw)]), timeout=30))
    return response


def test_every_answer_names_the_incarnation_and_it_is_stable_while_the_session_lives(stub) -> None:
    sid = unique_id("inc")
    first = feed(stub, sid, "abc")
    assert first.created and first.incarnation != 0
    assert feed(stub, sid, "d").incarnation == first.incarnation
    assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).incarnation == first.incarnation
    tokens = list(stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=3, seed=1)))
    assert {t.incarnation for t in tokens} == {first.incarnation}
    ended = stub.EndSession(pb.EndSessionRequest(session_id=sid))
    assert ended.incarnation == first.incarnation and ended.position == 7


def test_reset_end_and_eviction_each_begin_a_new_incarnation() -> None:
    server = RunningServer(max_sessions=2)
    try:
        stub = server.stub()
        sid = unique_id("inc")
        seen = [feed(stub, sid, "abc").incarnation]
        seen.append(feed(stub, sid, "abc", reset=True).incarnation)
        feed(stub, sid, end=True)
        seen.append(feed(stub, sid, "abc").incarnation)
        feed(stub, unique_id("other"), "x")
        feed(stub, unique_id("other"), "x")  # the session limit evicts `sid`, the least recently used
        again = feed(stub, sid, "abc")
        assert again.created, "it was evicted"
        seen.append(again.incarnation)
        assert len(set(seen)) == 4 and 0 not in seen, seen
        assert {a.position for a in (again,)} == {3}, "same position every time: only the incarnation tells"
    finally:
        server.stop()


def test_position_alone_passes_on_a_refilled_session_the_incarnation_does_not(stub, model, vocab) -> None:
    """The case position cannot catch: the session is ended and someone refills it to the same
    position with other text. expected_incarnation refuses it, with the actual values, and nothing
    is computed."""
    sid = unique_id("refill")
    mine = feed(stub, sid, "To be")
    feed(stub, sid, end=True)
    theirs = feed(stub, sid, "Xyzzy")  # same length: same position, different history
    assert theirs.position == mine.position
    refused = feed(stub, sid, "!", expected_position=5, expected_incarnation=mine.incarnation)
    assert refused.error.code == number(FAILED_PRECONDITION)
    assert (refused.position, refused.incarnation) == (5, theirs.incarnation)
    assert "incarnation" in refused.error.message and "nothing was computed" in refused.error.message
    after = feed(stub, sid, "!", expected_position=5, expected_incarnation=theirs.incarnation)
    reference = reference_probabilities(model, vocab.encode("Xyzzy!"))
    assert after.position == 6, "the refused request fed nothing"
    assert_top_matches(after.next, reference[6], "after the refusal")


def test_expected_incarnation_zero_means_the_session_must_not_exist(stub) -> None:
    sid = unique_id("fresh")
    created = feed(stub, sid, "a", expected_position=0, expected_incarnation=0)
    assert created.created and not created.HasField("error")
    refused = feed(stub, sid, "b", expected_incarnation=0)
    assert refused.error.code == number(FAILED_PRECONDITION) and refused.incarnation == created.incarnation


def test_generate_refuses_the_wrong_incarnation_with_the_actual_values_as_metadata(stub) -> None:
    sid = unique_id("gen")
    first = feed(stub, sid, "abc")
    with pytest.raises(grpc.RpcError) as err:
        list(
            stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=3, expected_incarnation=first.incarnation + 1))
        )
    assert err.value.code() == FAILED_PRECONDITION
    trailing = dict(err.value.trailing_metadata())
    assert trailing["seqpredict-position"] == "3" and trailing["seqpredict-incarnation"] == str(first.incarnation)
    assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).position == 3, "nothing generated"


def test_a_strict_client_notices_a_session_refilled_to_the_same_position(server: RunningServer) -> None:
    with Client(server.address) as client:
        sid = unique_id("strict")
        mine = client.session(sid, strict=True)
        mine.feed("abc")
        assert mine.incarnation and mine.position == 3
        other = client.session(sid)
        other.end()
        other.feed("xyz")  # position 3 again, another incarnation
        with pytest.raises(PositionMismatch) as caught:
            mine.feed("d")
        assert caught.value.actual_position == 3
        assert caught.value.actual_incarnation == other.incarnation != mine.incarnation
        with pytest.raises(PositionMismatch):
            mine.generate_text(2)
        mine.refresh()  # the caller decides: take the session as it is now
        assert mine.feed("d").position == 4


def test_a_strict_pipelined_stream_carries_the_incarnation_it_knows(server: RunningServer, vocab: Vocabulary) -> None:
    with Client(server.address) as client:
        session = client.session(unique_id("pipe"), strict=True)
        session.feed("abc")
        known = session.incarnation
        answers = list(session.stream(["d", "e", "f"]))
        assert [a.incarnation for a in answers] == [known] * 3
        client.session(session.session_id).feed("z", reset=True)  # another writer resets it
        with pytest.raises(PositionMismatch) as caught:
            list(session.stream(["g", "h"]))
        assert caught.value.actual_incarnation not in (None, known)
