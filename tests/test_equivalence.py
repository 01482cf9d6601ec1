"""The equivalence contract: batching, interleaving and chunking never change a session's outputs."""

from __future__ import annotations

import math
import random
import threading
import uuid

import pytest

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.reference import assert_top_matches, reference_probabilities

SESSIONS = 64
STREAMS = 4


def _plan(rng: random.Random, vocab_size: int) -> dict[str, list[list[int]]]:
    """Random chunks (1-40 tokens, some single tokens) per session."""
    plan = {}
    for i in range(SESSIONS):
        chunks = []
        for _ in range(rng.randint(3, 8)):
            n = 1 if rng.random() < 0.4 else rng.randint(2, 40)
            chunks.append([rng.randrange(vocab_size) for _ in range(n)])
        plan[f"eq-{uuid.uuid4().hex[:8]}-{i}"] = chunks
    return plan


def _interleave(rng: random.Random, sessions: dict[str, list[list[int]]]) -> list[tuple[str, list[int], bool]]:
    """One stream's requests: each session's chunks in order, sessions randomly interleaved."""
    cursors = {sid: 0 for sid in sessions}
    order = []
    while cursors:
        sid = rng.choice(sorted(cursors))
        chunk = sessions[sid][cursors[sid]]
        order.append((sid, chunk, rng.random() < 0.3))
        cursors[sid] += 1
        if cursors[sid] == len(sessions[sid]):
            del cursors[sid]
    return order


@pytest.mark.parametrize("seed", [1, 2])
def test_interleaved_batched_chunked_streams_equal_each_session_alone(server, checkpoint, seed):
    rng = random.Random(seed)
    plan = _plan(rng, checkpoint.config.vocab_size)
    ids = list(plan)
    rng.shuffle(ids)
    per_stream = [{sid: plan[sid] for sid in ids[s::STREAMS]} for s in range(STREAMS)]
    orders = [_interleave(rng, sessions) for sessions in per_stream]
    results: list[list[pb.PredictResponse]] = [[] for _ in range(STREAMS)]

    def run(s: int) -> None:
        stub = server.stub()
        requests = (
            pb.PredictRequest(session_id=sid, tokens=chunk, all_steps=all_steps, top_k=5, request_id=i)
            for i, (sid, chunk, all_steps) in enumerate(orders[s])
        )
        results[s] = list(stub.Predict(requests, timeout=120))

    threads = [threading.Thread(target=run, args=(s,)) for s in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    model = checkpoint.build_model()
    reference = {sid: reference_probabilities(model, [t for c in chunks for t in c]) for sid, chunks in plan.items()}
    checked = 0
    for s in range(STREAMS):
        assert len(results[s]) == len(orders[s]), "one response per request"
        for i, (response, (sid, chunk, all_steps)) in enumerate(zip(results[s], orders[s], strict=True)):
            assert response.request_id == i and response.session_id == sid, "responses in request order"
            assert not response.HasField("error"), response.error.message
            ref = reference[sid]
            p = response.position
            assert_top_matches(response.next, ref[p], f"{sid}@{p}")
            if all_steps:
                assert len(response.steps) == len(chunk)
                for j, step in enumerate(response.steps):
                    assert_top_matches(step.top, ref[p - len(chunk) + j + 1], f"{sid}@{p - len(chunk) + j + 1}")
            checked += 1
    assert checked == sum(len(c) for c in plan.values())
    # Every session was fed all of its tokens, no more.
    stub = server.stub()
    for sid, chunks in plan.items():
        assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).position == sum(len(c) for c in chunks)


def test_predict_many_equals_separate_streams(server, checkpoint):
    rng = random.Random(7)
    vocab = checkpoint.config.vocab_size
    sessions = [f"many-{uuid.uuid4().hex[:8]}-{i}" for i in range(40)]
    fed: dict[str, list[int]] = {sid: [] for sid in sessions}
    messages = []
    for _ in range(6):
        reqs = []
        for sid in rng.sample(sessions, 25):
            chunk = [rng.randrange(vocab) for _ in range(rng.choice([1, 1, 3, 17]))]
            fed[sid].extend(chunk)
            reqs.append(pb.PredictRequest(session_id=sid, tokens=chunk))
        messages.append(pb.PredictManyRequest(requests=reqs))
    stub = server.stub()
    replies = list(stub.PredictMany(iter(messages), timeout=60))
    assert [len(r.responses) for r in replies] == [len(m.requests) for m in messages]
    model = checkpoint.build_model()
    reference = {sid: reference_probabilities(model, fed[sid]) for sid in sessions}
    for reply, message in zip(replies, messages, strict=True):
        for response, request in zip(reply.responses, message.requests, strict=True):
            assert response.session_id == request.session_id
            assert_top_matches(response.next, reference[request.session_id][response.position], request.session_id)


def test_forks_and_scores_taken_under_concurrent_load_equal_each_history_alone(server, checkpoint):
    """Streams feed sessions (some requests scoring their tokens) while another client forks them at
    random moments. Each fork copies its source at some position p (which it reports): fed a
    continuation, it must equal the source's first p tokens plus the continuation, alone; every
    score must equal the reference's log-probability of its token."""
    rng = random.Random(3)
    vocab = checkpoint.config.vocab_size
    plan = {sid: chunks for sid, chunks in list(_plan(rng, vocab).items())[:24]}
    ids = list(plan)
    per_stream = [{sid: plan[sid] for sid in ids[s::3]} for s in range(3)]
    orders = [_interleave(rng, sessions) for sessions in per_stream]
    results: list[list[pb.PredictResponse]] = [[] for _ in range(3)]
    forks: list[tuple[str, str, int]] = []  # (fork id, source id, position copied)
    done = threading.Event()

    def feed(s: int) -> None:
        requests = (
            pb.PredictRequest(session_id=sid, tokens=chunk, score=scored, top_k=5) for sid, chunk, scored in orders[s]
        )
        results[s] = list(server.stub().Predict(requests, timeout=120))

    def fork() -> None:
        stub, forker = server.stub(), random.Random(9)
        while not done.is_set() or len(forks) < 8:
            source = forker.choice(ids)
            target = f"fork-{uuid.uuid4().hex[:8]}"
            try:
                info = stub.ForkSession(pb.ForkSessionRequest(source_session_id=source, target_session_id=target))
            except Exception:  # the source does not exist yet: nothing fed to it so far
                continue
            forks.append((target, source, info.position))

    feeders = [threading.Thread(target=feed, args=(s,)) for s in range(3)]
    forker = threading.Thread(target=fork)
    for t in (*feeders, forker):
        t.start()
    for t in feeders:
        t.join()
    done.set()
    forker.join()

    model = checkpoint.build_model()
    history = {sid: [t for c in chunks for t in c] for sid, chunks in plan.items()}
    reference = {sid: reference_probabilities(model, tokens) for sid, tokens in history.items()}
    scored = 0
    for s in range(3):
        for response, (sid, chunk, score) in zip(results[s], orders[s], strict=True):
            assert_top_matches(response.next, reference[sid][response.position], f"{sid}@{response.position}")
            if score:
                start = response.position - len(chunk)
                for j, (token, logp) in enumerate(zip(chunk, response.token_log_probs, strict=True)):
                    assert abs(math.exp(logp) - reference[sid][start + j][token].item()) <= 1e-5
                scored += 1
    assert scored > 0 and len(forks) >= 8
    stub = server.stub()
    for target, source, position in forks:
        continuation = [rng.randrange(vocab) for _ in range(rng.choice([1, 5]))]
        (answer,) = list(stub.Predict(iter([pb.PredictRequest(session_id=target, tokens=continuation)])))
        tokens = history[source][:position] + continuation
        assert answer.position == len(tokens)
        assert_top_matches(
            answer.next, reference_probabilities(model, tokens)[-1], f"fork {target} of {source}@{position}"
        )
