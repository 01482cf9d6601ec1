"""Session semantics over the real server: persistence, reset, end, positions, ordering."""

from __future__ import annotations

import uuid

import grpc
import pytest

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.reference import assert_top_matches, reference_probabilities


def sid(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def feed(stub, session_id: str, **kw) -> pb.PredictResponse:
    (response,) = list(stub.Predict(iter([pb.PredictRequest(session_id=session_id, **kw)]), timeout=30))
    return response


def test_state_persists_across_rpcs_and_channels(server, checkpoint):
    session = sid()
    ids = checkpoint.vocab.encode("To be, or not to be")
    first = feed(server.stub(), session, tokens=ids[:7])
    other_channel = server.stub()
    second = feed(other_channel, session, tokens=ids[7:])
    assert (first.created, second.created) == (True, False)
    assert second.position == len(ids)
    ref = reference_probabilities(checkpoint.build_model(), ids)
    assert_top_matches(second.next, ref[len(ids)], "continued on a second channel")


def test_text_and_token_ids_are_the_same_input(stub, checkpoint):
    a, b = sid(), sid()
    by_text = feed(stub, a, text="ROMEO:")
    by_ids = feed(stub, b, tokens=checkpoint.vocab.encode("ROMEO:"))
    assert [t.id for t in by_text.next] == [t.id for t in by_ids.next]
    assert [t.text for t in by_text.next] == [checkpoint.vocab.chars[t.id] for t in by_text.next]


def test_empty_input_predicts_from_the_current_state(stub, checkpoint):
    session = sid()
    fed = feed(stub, session, text="KING")
    again = feed(stub, session)
    assert again.position == fed.position == 4
    assert [(t.id, t.probability) for t in again.next] == [(t.id, t.probability) for t in fed.next]
    fresh = feed(stub, sid())
    ref = reference_probabilities(checkpoint.build_model(), [])
    assert fresh.created and fresh.position == 0
    assert_top_matches(fresh.next, ref[0], "zero state")


def test_reset_starts_again_from_the_zero_state(stub):
    session, fresh = sid(), sid()
    feed(stub, session, text="Some earlier context. ")
    after_reset = feed(stub, session, text="HAMLET", reset=True)
    reference = feed(stub, fresh, text="HAMLET")
    assert after_reset.position == 6 and not after_reset.created
    assert [(t.id, t.probability) for t in after_reset.next] == [(t.id, t.probability) for t in reference.next]


def test_end_releases_and_the_next_request_creates_again(stub):
    session = sid()
    feed(stub, session, text="abc")
    ended = feed(stub, session, text="d", end=True)
    assert ended.ended and ended.position == 4
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSession(pb.GetSessionRequest(session_id=session))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    again = feed(stub, session, text="e")
    assert again.created and again.position == 1


def test_get_and_end_session(stub):
    session = sid()
    feed(stub, session, text="Hello")
    info = stub.GetSession(pb.GetSessionRequest(session_id=session))
    assert info.session_id == session and info.position == 5
    assert info.created_at.ToNanoseconds() <= info.last_used_at.ToNanoseconds() < info.expires_at.ToNanoseconds()
    ended = stub.EndSession(pb.EndSessionRequest(session_id=session))
    assert ended.position == 5
    for call in (stub.GetSession, stub.EndSession):
        with pytest.raises(grpc.RpcError) as err:
            call(
                pb.GetSessionRequest(session_id=session)
                if call == stub.GetSession
                else pb.EndSessionRequest(session_id=session)
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert session in err.value.details()


def test_expected_position_match_and_mismatch(stub):
    session = sid()
    feed(stub, session, text="abcd", expected_position=0)
    ok = feed(stub, session, text="e", expected_position=4)
    assert ok.position == 5 and not ok.HasField("error")
    wrong = feed(stub, session, text="f", expected_position=3)
    assert wrong.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert wrong.position == 5 and "5" in wrong.error.message
    assert stub.GetSession(pb.GetSessionRequest(session_id=session)).position == 5, "nothing computed"
    missing = feed(stub, sid(), text="x", expected_position=2)
    assert missing.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and missing.position == 0
    with pytest.raises(grpc.RpcError):
        stub.GetSession(pb.GetSessionRequest(session_id=missing.session_id))


def test_one_stream_many_sessions_with_a_bad_request_answered_in_band(stub):
    a, b = sid("a"), sid("b")
    requests = [
        pb.PredictRequest(session_id=a, text="one", request_id=1),
        pb.PredictRequest(session_id=b, text="two", request_id=2),
        pb.PredictRequest(session_id="no spaces allowed", text="x", request_id=3),
        pb.PredictRequest(session_id=a, tokens=[10_000], request_id=4),
        pb.PredictRequest(session_id=a, text=" more", request_id=5),
        pb.PredictRequest(session_id=b, text="!", request_id=6),
    ]
    responses = list(stub.Predict(iter(requests), timeout=30))
    assert [r.request_id for r in responses] == [1, 2, 3, 4, 5, 6]
    codes = [r.error.code for r in responses]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert codes == [0, 0, invalid, invalid, 0, 0]
    assert [r.position for r in responses if not r.error.code] == [3, 3, 8, 4]


def test_all_steps_returns_one_prediction_per_input_token(stub):
    response = feed(stub, sid(), text="abcdef", all_steps=True, top_k=3)
    assert len(response.steps) == 6 and all(len(s.top) == 3 for s in response.steps)
    assert [(t.id, t.probability) for t in response.steps[-1].top] == [(t.id, t.probability) for t in response.next]


def test_long_input_is_chunked_and_still_exact(server, checkpoint):
    """A request longer than the prefill chunk spans several batches."""
    text = ("Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 20)[:1500]
    response = feed(server.stub(), sid(), text=text, all_steps=True)
    ids = checkpoint.vocab.encode(text)
    ref = reference_probabilities(checkpoint.build_model(), ids)
    assert response.position == len(ids) and len(response.steps) == len(ids)
    for p in (1, 511, 512, 513, 1024, 1500):
        assert_top_matches(response.steps[p - 1].top, ref[p], f"step {p}")
