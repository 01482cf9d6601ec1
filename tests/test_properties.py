"""Property: any sequence of requests keeps the server's session bookkeeping equal to a tiny model of it.

Hypothesis drives random sequences — feeds (ids or text, 0-12 tokens, with reset / end /
a right or wrong expected_position), short Generates, GetSession, EndSession and bad
requests (bad id, out-of-range token, unknown character, top_k out of range) — over three
session ids against one real server. The model is a dict id → tokens consumed; every answer
must agree with it: codes, positions, `created`, `ended`, NOT_FOUND, and the probabilities,
which must equal the reference (the model's tokens fed alone through the network). Each
example uses fresh session ids, so examples never see each other's sessions.
"""

from __future__ import annotations

import queue
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from seqpredict.models import CharRNN, Checkpoint, Vocabulary
from seqpredict.server.validation import SESSION_ID
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.bystanders import unique_id
from tests.conftest import RunningServer
from tests.reference import TOLERANCE, assert_top_matches, reference_probabilities

SESSIONS = 3
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
_CLOSE = object()

# Characters protobuf can carry (no lone surrogates), for ids and text that must be refused.
ANY_CHAR = st.characters(blacklist_categories=("Cs",))
BAD_IDS = st.one_of(
    st.just(""),
    st.text(alphabet="ab", min_size=129, max_size=140),
    st.text(alphabet=ANY_CHAR, min_size=1, max_size=8).filter(lambda s: SESSION_ID.fullmatch(s) is None),
)
BAD_KINDS = ("session id", "token", "character", "top_k")


def machine(server: RunningServer, model: CharRNN, vocab: Vocabulary) -> type[RuleBasedStateMachine]:
    """The state machine class, closed over one shared server and the reference model."""
    V = len(vocab)
    session = st.integers(0, SESSIONS - 1)
    tokens = st.lists(st.integers(0, V - 1), max_size=12)
    text = st.text(alphabet=st.sampled_from(vocab.chars), max_size=12)
    expectation = st.sampled_from(["none", "right", "wrong"])
    sometimes = st.integers(0, 4).map(lambda n: n == 0)  # reset / end one time in five: sessions live a while

    class SessionBookkeeping(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            prefix = unique_id("prop")
            self.ids = [f"{prefix}-{i}" for i in range(SESSIONS)]
            self.history: dict[str, list[int]] = {}  # the reference model: id → tokens consumed
            self.stub = server.stub()
            self.outbox: queue.Queue[Any] = queue.Queue()
            self.stream = self.stub.Predict(iter(self.outbox.get, _CLOSE), timeout=600)

        def teardown(self) -> None:
            self.outbox.put(_CLOSE)
            assert not list(self.stream) and self.stream.code() == grpc.StatusCode.OK

        # -- helpers -------------------------------------------------------------------------------
        def predict(self, **fields: Any) -> pb.PredictResponse:
            self.outbox.put(pb.PredictRequest(**fields))
            return next(self.stream)

        def position(self, sid: str) -> int:
            return len(self.history.get(sid, []))

        def expected_position(self, sid: str, how: str, data: st.DataObject) -> int | None:
            if how == "none":
                return None
            actual = self.position(sid)
            if how == "right":
                return actual
            return data.draw(st.integers(0, 2**64 - 1).filter(lambda p: p != actual), label="wrong position")

        def assert_unchanged_after_refusal(self, answer: pb.PredictResponse, code: int) -> None:
            assert answer.error.code == code, answer.error
            assert not answer.next and not answer.created and not answer.ended

        # -- rules -----------------------------------------------------------------------------------
        @rule(
            i=session,
            data=st.data(),
            as_text=st.booleans(),
            how=expectation,
            reset=sometimes,
            end=sometimes,
        )
        def feed(self, i: int, data: st.DataObject, as_text: bool, how: str, reset: bool, end: bool) -> None:
            sid = self.ids[i]
            fields: dict[str, Any] = {"session_id": sid, "reset": reset, "end": end, "top_k": 5}
            if as_text:
                fields["text"] = data.draw(text, label="text")
                fed = vocab.encode(fields["text"])
            else:
                fed = fields["tokens"] = data.draw(tokens, label="tokens")
            expected = self.expected_position(sid, how, data)
            if expected is not None:
                fields["expected_position"] = expected
            answer = self.predict(**fields)
            exists = sid in self.history
            if how == "wrong":
                self.assert_unchanged_after_refusal(answer, FAILED_PRECONDITION)
                assert answer.position == self.position(sid)
                return
            assert not answer.HasField("error"), answer.error
            base = self.history[sid] if exists and not reset else []
            now = base + fed
            assert (answer.created, answer.ended, answer.position) == (not exists, end, len(now))
            assert_top_matches(answer.next, reference_probabilities(model, now)[len(now)], f"feed {sid}")
            if end:
                self.history.pop(sid, None)
            else:
                self.history[sid] = now

        @rule(
            i=session,
            data=st.data(),
            prompt=text,
            max_tokens=st.integers(1, 4),
            seed=st.integers(0, 2**64 - 1),
            how=expectation,
            reset=sometimes,
            end=sometimes,
        )
        def generate(
            self, i: int, data: st.DataObject, prompt: str, max_tokens: int, seed: int, how: str, reset: bool, end: bool
        ) -> None:
            sid = self.ids[i]
            request = pb.GenerateRequest(
                session_id=sid, prompt_text=prompt, max_tokens=max_tokens, seed=seed, reset=reset, end=end
            )
            expected = self.expected_position(sid, how, data)
            if expected is not None:
                request.expected_position = expected
            exists = sid in self.history
            if how == "wrong":
                with pytest.raises(grpc.RpcError) as err:
                    list(self.stub.Generate(request, timeout=60))
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert ("seqpredict-position", str(self.position(sid))) in tuple(err.value.trailing_metadata())
                return
            answers = list(self.stub.Generate(request, timeout=60))
            now = (self.history[sid] if exists and not reset else []) + vocab.encode(prompt)
            start = len(now)
            now += [a.token for a in answers]
            reference = reference_probabilities(model, now)
            assert len(answers) == max_tokens
            for k, a in enumerate(answers):
                assert a.position == start + k + 1 and a.created == (k == 0 and not exists)
                assert abs(a.probability - reference[start + k][a.token].item()) <= TOLERANCE
            if end:
                self.history.pop(sid, None)
            else:
                self.history[sid] = now

        @rule(i=session)
        def get_session(self, i: int) -> None:
            sid = self.ids[i]
            if sid not in self.history:
                with pytest.raises(grpc.RpcError) as err:
                    self.stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=60)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                return
            assert self.stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=60).position == self.position(sid)

        @rule(i=session)
        def end_session(self, i: int) -> None:
            sid = self.ids[i]
            if sid not in self.history:
                with pytest.raises(grpc.RpcError) as err:
                    self.stub.EndSession(pb.EndSessionRequest(session_id=sid), timeout=60)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                return
            ended = self.stub.EndSession(pb.EndSessionRequest(session_id=sid), timeout=60)
            assert ended.position == len(self.history.pop(sid))

        @rule(i=session, kind=st.sampled_from(BAD_KINDS), data=st.data(), reset=sometimes, end=sometimes)
        def bad_request(self, i: int, kind: str, data: st.DataObject, reset: bool, end: bool) -> None:
            """One request refused by validation; its reset / end must not be applied either."""
            fields: dict[str, Any] = {"session_id": self.ids[i], "reset": reset, "end": end}
            if kind == "session id":
                fields |= {"session_id": data.draw(BAD_IDS, label="id"), "text": "a"}
                expected = ["session_id"]
            elif kind == "token":
                good = data.draw(tokens, label="good tokens")
                bad = data.draw(st.one_of(st.integers(-(2**31), -1), st.integers(V, 2**31 - 1)), label="bad token")
                at = data.draw(st.integers(0, len(good)), label="at")
                fields["tokens"] = [*good[:at], bad, *good[at:]]
                expected = [f"token {bad} at index {at}"]
            elif kind == "character":
                good = data.draw(text, label="good text")
                char = data.draw(ANY_CHAR.filter(lambda c: c not in vocab), label="unknown character")
                at = data.draw(st.integers(0, len(good)), label="at")
                fields["text"] = good[:at] + char + good[at:]
                expected = [repr(char), f"position {at}"]
            else:
                fields |= {"text": "ab", "top_k": data.draw(st.one_of(st.just(0), st.integers(V + 1, 2**32 - 1)))}
                expected = ["top_k"]
            answer = self.predict(**fields)
            self.assert_unchanged_after_refusal(answer, INVALID)
            for fragment in expected:
                assert fragment in answer.error.message, answer.error.message

    return SessionBookkeeping


def test_session_bookkeeping_matches_a_reference_model(server: RunningServer, checkpoint: Checkpoint) -> None:
    run_state_machine_as_test(
        machine(server, checkpoint.build_model(), checkpoint.vocab),
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
