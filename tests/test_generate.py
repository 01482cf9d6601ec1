"""Generate: reproducible sampling, stop strings, limits, cancellation, and state continuity."""

from __future__ import annotations

import threading
import time
import uuid

import grpc
import pytest

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.bystanders import Metrics
from tests.reference import TOLERANCE, reference_probabilities


def sid() -> str:
    return f"gen-{uuid.uuid4().hex[:10]}"


def generate(stub, session_id: str, **kw) -> list[pb.GenerateResponse]:
    return list(stub.Generate(pb.GenerateRequest(session_id=session_id, **kw), timeout=60))


def text_of(responses: list[pb.GenerateResponse]) -> str:
    return "".join(r.text for r in responses)


def next_probs(stub, session_id: str) -> list[tuple[int, float]]:
    (r,) = list(stub.Predict(iter([pb.PredictRequest(session_id=session_id, top_k=10)]), timeout=30))
    return [(t.id, t.probability) for t in r.next]


def test_same_seed_same_state_same_text(stub):
    a = generate(stub, sid(), prompt_text="ROMEO:\n", max_tokens=80, seed=42)
    b = generate(stub, sid(), prompt_text="ROMEO:\n", max_tokens=80, seed=42)
    c = generate(stub, sid(), prompt_text="ROMEO:\n", max_tokens=80, seed=43)
    assert text_of(a) == text_of(b)
    assert text_of(a) != text_of(c)
    assert [r.position for r in a] == list(range(8, 88))
    assert a[0].created and not any(r.created for r in a[1:])


def test_max_tokens_and_finish_reason(stub):
    out = generate(stub, sid(), max_tokens=25, seed=1)
    assert len(out) == 25
    assert out[-1].finish_reason == pb.FINISH_REASON_MAX_TOKENS
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in out[:-1])


def test_stop_string_ends_generation_and_counts_its_tokens(stub):
    session = sid()
    out = generate(stub, session, prompt_text="KING:\n", max_tokens=2000, seed=3, stop=["\n"])
    text = text_of(out)
    assert out[-1].finish_reason == pb.FINISH_REASON_STOP and out[-1].stop == "\n"
    assert text.endswith("\n") and "\n" not in text[:-1]
    assert stub.GetSession(pb.GetSessionRequest(session_id=session)).position == 6 + len(out)


def test_greedy_follows_the_model_argmax(stub, checkpoint):
    out = generate(stub, sid(), prompt_text="The ", max_tokens=30, temperature=0.0)
    model = checkpoint.build_model()
    prompt = checkpoint.vocab.encode("The ")
    ref = reference_probabilities(model, prompt + [r.token for r in out])
    for i, r in enumerate(out):
        row = ref[len(prompt) + i]
        assert r.token == int(row.argmax()), f"token {i}"
        assert abs(r.probability - row[r.token].item()) <= TOLERANCE


def test_generated_tokens_advance_the_session(stub, checkpoint):
    session = sid()
    out = generate(stub, session, prompt_text="First Citizen:\n", max_tokens=40, seed=5)
    served = next_probs(stub, session)
    ids = checkpoint.vocab.encode("First Citizen:\n") + [r.token for r in out]
    ref = reference_probabilities(checkpoint.build_model(), ids)[len(ids)]
    for token, probability in served:
        assert abs(probability - ref[token].item()) <= TOLERANCE
    more = generate(stub, session, max_tokens=5, seed=6)
    assert more[0].position == len(ids) + 1 and not more[0].created


def test_cancelling_stops_promptly_and_position_counts_fed_tokens(server):
    stub = server.stub()
    session, replay = sid(), sid()
    call = stub.Generate(pb.GenerateRequest(session_id=session, prompt_text="A", max_tokens=4000, seed=9), timeout=60)
    received = [next(call) for _ in range(5)]
    call.cancel()
    position = stub.GetSession(pb.GetSessionRequest(session_id=session)).position
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the engine stops at its next batch
        time.sleep(0.2)
        later = stub.GetSession(pb.GetSessionRequest(session_id=session)).position
        if later == position:
            break
        position = later
    generated = position - 1
    assert len(received) <= generated < 4000, "stopped promptly, and no token sent was left unfed"
    # Replaying the same seed for exactly `generated` tokens reaches the same state.
    replayed = generate(stub, replay, prompt_text="A", max_tokens=generated, seed=9)
    assert [r.token for r in replayed[:5]] == [r.token for r in received]
    cancelled, replayed_probs = next_probs(stub, session), next_probs(stub, replay)
    assert [t for t, _ in cancelled] == [t for t, _ in replayed_probs]
    assert [p for _, p in cancelled] == pytest.approx([p for _, p in replayed_probs], abs=TOLERANCE)


def test_concurrent_generations_batch_together_and_stay_exact(server):
    stub = server.stub()
    sessions = [sid() for _ in range(16)]
    outputs: dict[str, str] = {}

    def run(session: str, seed: int) -> None:
        outputs[session] = text_of(generate(stub, session, prompt_text="CLOWN:\n", max_tokens=120, seed=seed))

    before = Metrics(server.metrics_url)
    threads = [threading.Thread(target=run, args=(s, i)) for i, s in enumerate(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = Metrics(server.metrics_url)
    batches = after.value("seqpredict_batch_size_count") - before.value("seqpredict_batch_size_count")
    sessions_stepped = after.value("seqpredict_batch_size_sum") - before.value("seqpredict_batch_size_sum")
    assert sessions_stepped / batches > 1.5, "concurrent generations share engine batches"
    for i, s in enumerate(sessions):
        alone = text_of(generate(stub, sid(), prompt_text="CLOWN:\n", max_tokens=120, seed=i))
        assert outputs[s] == alone


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"max_tokens": 5, "temperature": float("nan")}, "temperature"),
        ({"max_tokens": 5, "temperature": -1.0}, "temperature"),
        ({"max_tokens": 5, "temperature": 1e9}, "temperature"),
        ({"max_tokens": 5, "top_p": 0.0}, "top_p"),
        ({"max_tokens": 5, "top_p": 1.5}, "top_p"),
        ({"max_tokens": 5, "top_k": 0}, "top_k"),
        ({"max_tokens": 5, "top_k": 10_000}, "top_k"),
        ({"max_tokens": 5, "stop": [""]}, "stop"),
        ({"max_tokens": 5, "prompt_text": "naïve"}, "'ï'"),
        ({"max_tokens": 5, "prompt_tokens": [-1]}, "outside the vocabulary"),
    ],
)
def test_bad_generate_requests_are_invalid_argument(stub, fields, needle):
    with pytest.raises(grpc.RpcError) as err:
        generate(stub, sid(), **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()


def test_generate_expected_position_mismatch_reports_the_actual_position(stub):
    session = sid()
    generate(stub, session, prompt_text="abc", max_tokens=2, seed=1)
    with pytest.raises(grpc.RpcError) as err:
        generate(stub, session, max_tokens=2, expected_position=1)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("seqpredict-position", "5") in tuple(err.value.trailing_metadata())
    assert stub.GetSession(pb.GetSessionRequest(session_id=session)).position == 5
