"""Property: any sequence of requests keeps the server's session bookkeeping equal to a tiny model of it.

Hypothesis drives random sequences — feeds (ids or text, 0-12 tokens, with reset / end /
a right or wrong expected_position or expected_incarnation, scored or not), short Generates,
GetSession, EndSession, ForkSession, ExportSession + ImportSession, ListSessions in pages of
any size, and bad requests (bad id,
out-of-range token, unknown character, top_k out of range) — over three session ids against
one real server. The model is a dict id → tokens consumed, and id → incarnation as answers
name them; every answer must agree with it: codes, positions, `created`, `ended`,
NOT_FOUND / ALREADY_EXISTS, incarnations that stay put until a reset, creation, fork or
import says otherwise, and the probabilities, which must equal the reference (the model's
tokens fed alone through the network). Each example uses fresh session ids, so examples
never see each other's sessions.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

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


def machine(servers: Sequence[Any], model: CharRNN, vocab: Vocabulary) -> type[RuleBasedStateMachine]:
    """The state machine class, closed over shared servers and the reference model. With several
    servers (replicas sharing a session store), a rule switches which one the next requests go to:
    the model — one session space — must hold whichever replica answers."""
    V = len(vocab)
    session = st.integers(0, SESSIONS - 1)
    tokens = st.lists(st.integers(0, V - 1), max_size=12)
    text = st.text(alphabet=st.sampled_from(vocab.chars), max_size=12)
    expectation = st.sampled_from(["none", "right", "wrong", "wrong-incarnation"])
    sometimes = st.integers(0, 4).map(lambda n: n == 0)  # reset / end one time in five: sessions live a while

    class SessionBookkeeping(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.prefix = unique_id("prop") + "-"
            self.ids = [f"{self.prefix}{i}" for i in range(SESSIONS)]
            self.history: dict[str, list[int]] = {}  # the reference model: id → tokens consumed
            self.incarnation: dict[str, int] = {}  # id → its incarnation, as the server named it
            self.stubs = [server.stub() for server in servers]
            self.outboxes: list[queue.Queue[Any]] = [queue.Queue() for _ in servers]
            self.streams = [
                stub.Predict(iter(outbox.get, _CLOSE), timeout=600)
                for stub, outbox in zip(self.stubs, self.outboxes, strict=True)
            ]
            self.via = 0  # the server the next requests go to

        @property
        def stub(self) -> Any:
            return self.stubs[self.via]

        def teardown(self) -> None:
            for outbox, stream in zip(self.outboxes, self.streams, strict=True):
                outbox.put(_CLOSE)
                assert not list(stream) and stream.code() == grpc.StatusCode.OK

        @precondition(lambda self: len(servers) > 1)
        @rule(data=st.data())
        def switch_replica(self, data: st.DataObject) -> None:
            self.via = data.draw(st.integers(0, len(servers) - 1), label="replica")

        # -- helpers -------------------------------------------------------------------------------
        def predict(self, **fields: Any) -> pb.PredictResponse:
            self.outboxes[self.via].put(pb.PredictRequest(**fields))
            return next(self.streams[self.via])

        def position(self, sid: str) -> int:
            return len(self.history.get(sid, []))

        def guard(self, sid: str, how: str, data: st.DataObject) -> dict[str, int]:
            """expected_position / expected_incarnation for `how`: none, right, or one of them wrong."""
            if how == "none":
                return {}
            actual, incarnation = self.position(sid), self.incarnation.get(sid, 0)
            if how == "right":
                return {"expected_position": actual, "expected_incarnation": incarnation}
            if how == "wrong-incarnation":
                wrong = data.draw(st.integers(0, 2**64 - 1).filter(lambda i: i != incarnation), label="wrong inc")
                return {"expected_position": actual, "expected_incarnation": wrong}
            wrong = data.draw(st.integers(0, 2**64 - 1).filter(lambda p: p != actual), label="wrong position")
            return {"expected_position": wrong}

        def named(self, sid: str, incarnation: int, fresh: bool) -> None:
            """An answer named the session's incarnation: new (created, reset, forked) or unchanged."""
            assert incarnation != 0
            if fresh:
                assert incarnation != self.incarnation.get(sid), "a new history has a new incarnation"
            else:
                assert incarnation == self.incarnation[sid], "the same history keeps its incarnation"
            self.incarnation[sid] = incarnation

        def forget(self, sid: str) -> None:
            self.history.pop(sid, None)
            self.incarnation.pop(sid, None)

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
            score=st.booleans(),
        )
        def feed(
            self, i: int, data: st.DataObject, as_text: bool, how: str, reset: bool, end: bool, score: bool
        ) -> None:
            sid = self.ids[i]
            fields: dict[str, Any] = {"session_id": sid, "reset": reset, "end": end, "top_k": 5, "score": score}
            if as_text:
                fields["text"] = data.draw(text, label="text")
                fed = vocab.encode(fields["text"])
            else:
                fed = fields["tokens"] = data.draw(tokens, label="tokens")
            fields |= self.guard(sid, how, data)
            answer = self.predict(**fields)
            exists = sid in self.history
            if how.startswith("wrong"):
                self.assert_unchanged_after_refusal(answer, FAILED_PRECONDITION)
                assert (answer.position, answer.incarnation) == (self.position(sid), self.incarnation.get(sid, 0))
                return
            assert not answer.HasField("error"), answer.error
            base = self.history[sid] if exists and not reset else []
            now = base + fed
            assert (answer.created, answer.ended, answer.position) == (not exists, end, len(now))
            reference = reference_probabilities(model, now)
            assert_top_matches(answer.next, reference[len(now)], f"feed {sid}")
            if score:  # each fed token's log-probability under the state before it, and their sum
                expected = [reference[len(base) + k][t].log().item() for k, t in enumerate(fed)]
                assert answer.token_log_probs == pytest.approx(expected, abs=1e-4)
                assert answer.log_prob_sum == pytest.approx(sum(expected), abs=1e-3)
            else:
                assert not answer.token_log_probs and answer.log_prob_sum == 0
            self.named(sid, answer.incarnation, fresh=not exists or reset)
            if end:
                self.forget(sid)
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
            for name, value in self.guard(sid, how, data).items():
                setattr(request, name, value)
            exists = sid in self.history
            if how.startswith("wrong"):
                with pytest.raises(grpc.RpcError) as err:
                    list(self.stub.Generate(request, timeout=60))
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                trailing = tuple(err.value.trailing_metadata())
                assert ("seqpredict-position", str(self.position(sid))) in trailing
                assert ("seqpredict-incarnation", str(self.incarnation.get(sid, 0))) in trailing
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
            self.named(sid, answers[0].incarnation, fresh=not exists or reset)
            assert {a.incarnation for a in answers} == {answers[0].incarnation}
            if end:
                self.forget(sid)
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
            info = self.stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=60)
            assert (info.position, info.incarnation) == (self.position(sid), self.incarnation[sid])

        @rule(page_size=st.integers(1, SESSIONS + 1))
        def list_sessions(self, page_size: int) -> None:
            """Every live session of this machine once, in name order, as the model has it."""
            listed, token = [], ""
            while True:
                request = pb.ListSessionsRequest(prefix=self.prefix, page_size=page_size, page_token=token)
                page = self.stub.ListSessions(request, timeout=60)
                listed += [(info.session_id, info.position, info.incarnation) for info in page.sessions]
                if not (token := page.next_page_token):
                    break
            assert listed == [(sid, self.position(sid), self.incarnation[sid]) for sid in sorted(self.history)]

        @rule(i=session)
        def end_session(self, i: int) -> None:
            sid = self.ids[i]
            if sid not in self.history:
                with pytest.raises(grpc.RpcError) as err:
                    self.stub.EndSession(pb.EndSessionRequest(session_id=sid), timeout=60)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                return
            ended = self.stub.EndSession(pb.EndSessionRequest(session_id=sid), timeout=60)
            assert (ended.position, ended.incarnation) == (self.position(sid), self.incarnation[sid])
            self.forget(sid)

        @rule(i=session, j=session, replace=st.booleans())
        def fork(self, i: int, j: int, replace: bool) -> None:
            source, target = self.ids[i], self.ids[j]
            request = pb.ForkSessionRequest(source_session_id=source, target_session_id=target, replace=replace)
            if i == j or source not in self.history or (target in self.history and not replace):
                with pytest.raises(grpc.RpcError) as err:
                    self.stub.ForkSession(request, timeout=60)
                expected = (
                    grpc.StatusCode.INVALID_ARGUMENT
                    if i == j
                    else grpc.StatusCode.NOT_FOUND
                    if source not in self.history
                    else grpc.StatusCode.ALREADY_EXISTS
                )
                assert err.value.code() == expected
                return
            info = self.stub.ForkSession(request, timeout=60)
            assert info.position == self.position(source)
            assert info.incarnation != self.incarnation[source]
            self.history[target] = list(self.history[source])
            self.incarnation.pop(target, None)
            self.named(target, info.incarnation, fresh=True)

        @rule(i=session, j=session, end_first=st.booleans(), force=st.booleans())
        def export_import(self, i: int, j: int, end_first: bool, force: bool) -> None:
            """Export i, maybe end it, import the blob as j: allowed onto a missing session, onto the
            exact exported state, or with force; otherwise FAILED_PRECONDITION and nothing changes."""
            source, target = self.ids[i], self.ids[j]
            if source not in self.history:
                with pytest.raises(grpc.RpcError) as err:
                    self.stub.ExportSession(pb.ExportSessionRequest(session_id=source), timeout=60)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                return
            exported = self.stub.ExportSession(pb.ExportSessionRequest(session_id=source), timeout=60)
            blob_state = (list(self.history[source]), self.incarnation[source])
            assert exported.session.incarnation == blob_state[1]
            if end_first:
                self.stub.EndSession(pb.EndSessionRequest(session_id=source), timeout=60)
                self.forget(source)
            request = pb.ImportSessionRequest(session_id=target, blob=exported.blob, force=force)
            same = target in self.history and (self.history[target], self.incarnation[target]) == blob_state
            if target in self.history and not same and not force:
                with pytest.raises(grpc.RpcError) as err:
                    self.stub.ImportSession(request, timeout=60)
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                return
            info = self.stub.ImportSession(request, timeout=60)
            assert (info.position, info.incarnation) == (len(blob_state[0]), blob_state[1])
            self.history[target], self.incarnation[target] = blob_state

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
        machine([server], checkpoint.build_model(), checkpoint.vocab),
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
