"""Session state as an object: fork, export/import, list and scoring, against the real server."""

from __future__ import annotations

import math
import random

import grpc
import pytest

from seqpredict.client import AlreadyExists, Client, NotFound, PositionMismatch
from seqpredict.models import CharRNN, Vocabulary
from seqpredict.server.session_blob import _digest
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.bystanders import Counter, Metrics, assert_counters_moved, requests_total, unique_id, wait_until
from tests.conftest import RunningServer
from tests.reference import TOLERANCE, assert_top_matches, reference_probabilities

FAILED_PRECONDITION, INVALID = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT


def feed(stub, session_id: str, text: str = "", **kw) -> pb.PredictResponse:
    (response,) = list(stub.Predict(iter([pb.PredictRequest(session_id=session_id, text=text, **kw)]), timeout=30))
    assert not response.HasField("error"), response.error
    return response


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


# -- fork ---------------------------------------------------------------------------------------------------
def test_a_fork_continues_exactly_like_its_source_and_leaves_the_source_alone(stub, model, vocab) -> None:
    source, target = unique_id("src"), unique_id("dst")
    before = feed(stub, source, "ROMEO:\nBut soft")
    info = stub.ForkSession(pb.ForkSessionRequest(source_session_id=source, target_session_id=target))
    assert info.session_id == target and info.position == before.position
    assert info.incarnation not in (0, before.incarnation), "a copy is its own history"
    copy, original = feed(stub, target, ", what light"), feed(stub, source, ", what light")
    assert [(t.id, t.probability) for t in copy.next] == [(t.id, t.probability) for t in original.next]
    reference = reference_probabilities(model, vocab.encode("ROMEO:\nBut soft, what light"))
    assert_top_matches(copy.next, reference[-1], "the fork")
    assert stub.GetSession(pb.GetSessionRequest(session_id=source)).incarnation == before.incarnation


def test_a_fork_sees_every_earlier_request_of_its_source() -> None:
    """The fork is queued behind the source's requests: sent while an 8,192-token request of the
    source is still running (in batches of 16 tokens here), it copies the state after all of it."""
    server = RunningServer(prefill_chunk=16, max_batch_tokens=16)
    try:
        stub = server.stub()
        source = unique_id("ordered")
        consumed = Counter.of("seqpredict_tokens_consumed_total")
        before = consumed.read(Metrics(server.metrics_url))
        call = stub.Predict(iter([pb.PredictRequest(session_id=source, tokens=[5] * 8192)]), timeout=120)
        wait_until(lambda: consumed.read(Metrics(server.metrics_url)) > before, "the request is running")
        info = stub.ForkSession(pb.ForkSessionRequest(source_session_id=source, target_session_id=unique_id("copy")))
        assert info.position == next(call).position == 8192
    finally:
        server.stop()


def test_fork_refusals_change_nothing(stub) -> None:
    source, target = unique_id("src"), unique_id("dst")
    first = feed(stub, source, "abc")
    feed(stub, target, "xy")
    fork = lambda **kw: stub.ForkSession(
        pb.ForkSessionRequest(source_session_id=source, target_session_id=target, **kw)
    )
    assert code_of(fork) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: fork(replace=True, expected_position=2)) == FAILED_PRECONDITION
    assert code_of(lambda: fork(replace=True, expected_incarnation=first.incarnation + 1)) == FAILED_PRECONDITION
    assert stub.GetSession(pb.GetSessionRequest(session_id=target)).position == 2, "the target is untouched"
    replaced = fork(replace=True, expected_position=3, expected_incarnation=first.incarnation)
    assert replaced.position == 3
    missing = pb.ForkSessionRequest(source_session_id=unique_id("nobody"), target_session_id=unique_id("x"))
    assert code_of(lambda: stub.ForkSession(missing)) == grpc.StatusCode.NOT_FOUND
    same = pb.ForkSessionRequest(source_session_id=source, target_session_id=source)
    assert code_of(lambda: stub.ForkSession(same)) == INVALID
    bad = pb.ForkSessionRequest(source_session_id=source, target_session_id="not ok!")
    assert code_of(lambda: stub.ForkSession(bad)) == INVALID


def test_a_fork_never_overwrites_a_session_in_the_middle_of_a_request() -> None:
    """The target runs an 8,192-token request in 512 small batches; replacing it under that request
    is ABORTED (nothing changed), and the request completes."""
    server = RunningServer(prefill_chunk=16, max_batch_tokens=32)
    try:
        stub = server.stub()
        source, busy = unique_id("src"), unique_id("busy")
        feed(stub, source, "abc")
        consumed = Counter.of("seqpredict_tokens_consumed_total")
        before = consumed.read(Metrics(server.metrics_url))
        long = stub.Predict(iter([pb.PredictRequest(session_id=busy, tokens=[1] * 8192)]), timeout=120)
        wait_until(lambda: consumed.read(Metrics(server.metrics_url)) > before + 3, "the long request runs")
        fork = pb.ForkSessionRequest(source_session_id=source, target_session_id=busy, replace=True)
        assert code_of(lambda: stub.ForkSession(fork)) == grpc.StatusCode.ABORTED
        assert next(long).position == 8192
    finally:
        server.stop()


# -- export / import ----------------------------------------------------------------------------------------
def test_export_end_import_continue_is_bit_identical_to_never_having_left(stub) -> None:
    sid, twin = unique_id("moving"), unique_id("twin")
    feed(stub, sid, "Now is the winter of our discontent")
    exported = stub.ExportSession(pb.ExportSessionRequest(session_id=sid))
    stub.ForkSession(pb.ForkSessionRequest(source_session_id=sid, target_session_id=twin))  # never leaves
    stub.EndSession(pb.EndSessionRequest(session_id=sid))
    imported = stub.ImportSession(pb.ImportSessionRequest(blob=exported.blob))
    assert (imported.session_id, imported.position, imported.incarnation) == (
        sid,
        exported.session.position,
        exported.session.incarnation,
    ), "the same name, position and incarnation: a strict client continues as if nothing happened"
    moved = feed(stub, sid, "\nMade glorious", expected_incarnation=exported.session.incarnation, all_steps=True)
    stayed = feed(stub, twin, "\nMade glorious", all_steps=True)
    assert [[(t.id, t.probability) for t in s.top] for s in moved.steps] == [
        [(t.id, t.probability) for t in s.top] for s in stayed.steps
    ], "bit-identical, step by step"


def test_the_blob_describes_itself(stub, checkpoint) -> None:
    sid = unique_id("described")
    feed(stub, sid, "abc")
    blob = pb.SessionBlob.FromString(stub.ExportSession(pb.ExportSessionRequest(session_id=sid)).blob)
    cfg = checkpoint.config
    assert blob.format_version == 1 and blob.model_fingerprint == checkpoint.fingerprint
    assert blob.architecture.hidden_size == cfg.hidden_size and list(blob.architecture.state_names) == ["h", "c"]
    assert blob.layout.dtype == "float32"
    assert [(t.name, list(t.shape)) for t in blob.layout.tensors] == [
        (n, [cfg.num_layers, cfg.hidden_size]) for n in "hc"
    ]
    assert len(blob.state) == 2 * cfg.num_layers * cfg.hidden_size * 4
    assert (blob.session_id, blob.position) == (sid, 3) and blob.incarnation and blob.sha256 == _digest(blob)
    assert blob.exported_at.seconds > 0


def _resigned(blob: pb.SessionBlob) -> bytes:
    blob.sha256 = _digest(blob)
    return blob.SerializeToString()


def _bad_blobs(good: bytes) -> dict[str, tuple[bytes, grpc.StatusCode]]:
    def edited(change) -> pb.SessionBlob:
        blob = pb.SessionBlob.FromString(good)
        change(blob)
        return blob

    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    nan = edited(lambda b: setattr(b, "state", bytes(4 * 1024) + b"\x00\x00\xc0\x7f" + b.state[4 * 1024 + 4 :]))
    return {
        "not a blob": (b"hello, world", INVALID),
        "damaged": (bytes(flipped), INVALID),
        "no checksum": (edited(lambda b: b.ClearField("sha256")).SerializeToString(), INVALID),
        "another model": (_resigned(edited(lambda b: setattr(b, "model_fingerprint", "0" * 64))), FAILED_PRECONDITION),
        "future format": (_resigned(edited(lambda b: setattr(b, "format_version", 2))), INVALID),
        "wrong shape": (_resigned(edited(lambda b: b.layout.tensors[0].shape.__setitem__(1, 128))), INVALID),
        "short state": (_resigned(edited(lambda b: setattr(b, "state", b.state[:-4]))), INVALID),
        "unknown dtype": (_resigned(edited(lambda b: setattr(b.layout, "dtype", "int8"))), INVALID),
        "not finite": (_resigned(nan), INVALID),
        "incarnation 0": (_resigned(edited(lambda b: setattr(b, "incarnation", 0))), INVALID),
    }


def test_import_refuses_a_bad_blob_and_changes_nothing(stub) -> None:
    sid = unique_id("guarded")
    kept = feed(stub, sid, "abc")
    good = stub.ExportSession(pb.ExportSessionRequest(session_id=sid)).blob
    feed(stub, sid, "d")
    for name, (blob, code) in _bad_blobs(good).items():
        for target in (sid, unique_id("fresh")):
            request = pb.ImportSessionRequest(session_id=target, blob=blob, force=True)
            assert code_of(lambda r=request: stub.ImportSession(r)) == code, name
        info = stub.GetSession(pb.GetSessionRequest(session_id=sid))
        assert (info.position, info.incarnation) == (4, kept.incarnation), f"{name}: nothing changed"


def test_import_over_a_session_that_moved_on_needs_force(stub) -> None:
    sid = unique_id("fenced")
    feed(stub, sid, "abc")
    blob = stub.ExportSession(pb.ExportSessionRequest(session_id=sid)).blob
    same = stub.ImportSession(pb.ImportSessionRequest(blob=blob))  # exactly the exported state: fine
    assert same.position == 3
    feed(stub, sid, "d")
    with pytest.raises(grpc.RpcError) as err:
        stub.ImportSession(pb.ImportSessionRequest(blob=blob))
    assert err.value.code() == FAILED_PRECONDITION and "moved on since the export" in err.value.details()
    feed(stub, sid, "xyz", reset=True)  # another history of it
    with pytest.raises(grpc.RpcError) as err:
        stub.ImportSession(pb.ImportSessionRequest(blob=blob))
    assert err.value.code() == FAILED_PRECONDITION and "another history" in err.value.details()
    forced = stub.ImportSession(pb.ImportSessionRequest(blob=blob, force=True))
    assert forced.position == 3
    copy = stub.ImportSession(pb.ImportSessionRequest(session_id=unique_id("copy"), blob=blob))
    assert copy.position == 3, "a blob can be installed under another name"


def test_export_refusals_and_it_does_not_touch_the_session(stub) -> None:
    sid = unique_id("exp")
    first = feed(stub, sid, "abc")
    before = stub.GetSession(pb.GetSessionRequest(session_id=sid))
    stub.ExportSession(pb.ExportSessionRequest(session_id=sid))
    assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).last_used_at == before.last_used_at
    guarded = pb.ExportSessionRequest(session_id=sid, expected_incarnation=first.incarnation + 1)
    assert code_of(lambda: stub.ExportSession(guarded)) == FAILED_PRECONDITION
    missing = pb.ExportSessionRequest(session_id=unique_id("nobody"))
    assert code_of(lambda: stub.ExportSession(missing)) == grpc.StatusCode.NOT_FOUND


# -- list ---------------------------------------------------------------------------------------------------
def test_list_pages_through_every_session_of_a_prefix_once_in_name_order(stub) -> None:
    prefix = unique_id("ls") + "-"
    ids = sorted(f"{prefix}{i:04d}" for i in random.Random(4).sample(range(10_000), 250))
    for sid in ids:
        feed(stub, sid, "a")
    feed(stub, prefix[:-1] + "_elsewhere", "a")
    seen, token = [], ""
    while True:
        page = stub.ListSessions(pb.ListSessionsRequest(prefix=prefix, page_size=64, page_token=token))
        assert len(page.sessions) <= 64
        seen += [s.session_id for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    page = stub.ListSessions(pb.ListSessionsRequest(prefix=prefix, page_size=100_000))
    assert len(page.sessions) == 250, "page sizes above the maximum count as the maximum (1000)"
    stub.EndSession(pb.EndSessionRequest(session_id=ids[0]))
    first = stub.ListSessions(pb.ListSessionsRequest(prefix=prefix, page_size=1)).sessions[0]
    assert first.session_id == ids[1] and first.position == 1 and first.incarnation


def test_list_refuses_bad_tokens_and_prefixes(stub) -> None:
    feed(stub, "lsx-a", "a")
    feed(stub, "lsx-b", "a")
    token = stub.ListSessions(pb.ListSessionsRequest(prefix="lsx-", page_size=1)).next_page_token
    assert token
    for request in (
        pb.ListSessionsRequest(prefix="lsx-", page_token="not-a-token!"),
        pb.ListSessionsRequest(prefix="lsy-", page_token=token),
        pb.ListSessionsRequest(prefix="bad prefix"),
        pb.ListSessionsRequest(prefix="x" * 129),
    ):
        assert code_of(lambda r=request: stub.ListSessions(r)) == INVALID


# -- scoring --------------------------------------------------------------------------------------------------
def test_scoring_returns_each_tokens_log_probability_under_the_state_before_it(
    stub, model: CharRNN, vocab: Vocabulary
) -> None:
    """Fed in pieces (a single token, a chunk, pipelined requests), every token's log-probability
    equals the reference's at its position, and the sum adds them up."""
    sid = unique_id("score")
    text = "To be, or not to be, that is the question"
    pieces = ["T", "o be, or", " not", " to be", ", that is the question"]
    scores: list[float] = []
    for piece in pieces:
        answer = feed(stub, sid, piece, score=True)
        assert len(answer.token_log_probs) == len(piece)
        assert answer.log_prob_sum == pytest.approx(math.fsum(answer.token_log_probs), abs=1e-9)
        scores += answer.token_log_probs
    reference = reference_probabilities(model, vocab.encode(text))  # row p: after p tokens
    expected = [reference[i][t].item() for i, t in enumerate(vocab.encode(text))]
    for i, (got, want) in enumerate(zip(scores, expected, strict=True)):
        assert math.exp(got) == pytest.approx(want, abs=TOLERANCE), f"token {i}"
    empty = feed(stub, sid, "", score=True)
    assert list(empty.token_log_probs) == [] and empty.log_prob_sum == 0.0


def test_scoring_a_pipelined_stream_equals_scoring_the_text_at_once(stub) -> None:
    whole, piecewise = unique_id("whole"), unique_id("pieces")
    text = "Speak, speak; I charge thee, speak!"
    at_once = feed(stub, whole, text, score=True)
    answers = list(stub.Predict(iter([pb.PredictRequest(session_id=piecewise, text=c, score=True) for c in text])))
    scores = [a.token_log_probs[0] for a in answers]
    assert scores == pytest.approx(list(at_once.token_log_probs), abs=1e-5)


def test_generate_reports_the_log_probability_of_each_sampled_token(stub) -> None:
    tokens = list(stub.Generate(pb.GenerateRequest(session_id=unique_id("gen"), max_tokens=20, seed=3)))
    for t in tokens:
        assert t.log_probability == pytest.approx(math.log(t.probability), abs=1e-5)


# -- clients, metrics, reflection -----------------------------------------------------------------------------
def test_the_python_client_forks_exports_imports_lists_and_scores(server: RunningServer) -> None:
    with Client(server.address) as client:
        s = client.session(unique_id("py"), strict=True)
        s.feed("abc")
        child = s.fork(s.session_id + "-child")
        assert (child.position, child.strict) == (3, True) and child.incarnation != s.incarnation
        with pytest.raises(AlreadyExists):
            s.fork(child.session_id)
        exported = s.export()
        assert exported.info.position == 3 and exported.blob
        s.end()
        info = client.import_session(exported.blob)
        assert info.position == 3 and info.incarnation == exported.info.incarnation
        s.refresh()
        assert s.feed("d", score=True).perplexity > 1
        listed = [i.session_id for i in client.list_sessions(s.session_id, page_size=1)]
        assert listed == [s.session_id, child.session_id]
        child.end()
        with pytest.raises(NotFound):
            client.export_session(child.session_id)
        other = client.session(s.session_id)
        other.feed("x", reset=True)
        with pytest.raises(PositionMismatch):
            s.export()  # strict: not the state this handle expects


def test_operations_are_counted_by_kind_and_outcome(server: RunningServer) -> None:
    stub = server.stub()
    sid = unique_id("count")
    feed(stub, sid, "a")
    before = Metrics(server.metrics_url)
    stub.ForkSession(pb.ForkSessionRequest(source_session_id=sid, target_session_id=unique_id("c")))
    blob = stub.ExportSession(pb.ExportSessionRequest(session_id=sid)).blob
    stub.ImportSession(pb.ImportSessionRequest(session_id=unique_id("i"), blob=blob))
    code_of(lambda: stub.ImportSession(pb.ImportSessionRequest(session_id=sid, blob=b"junk")))
    stub.ListSessions(pb.ListSessionsRequest(prefix=sid))
    code_of(lambda: stub.ExportSession(pb.ExportSessionRequest(session_id=unique_id("none"))))
    assert_counters_moved(
        server.metrics_url,
        before,
        {
            requests_total("fork", "OK"): 1,
            requests_total("export", "OK"): 1,
            requests_total("export", "NotFound"): 1,
            requests_total("import", "OK"): 1,
            requests_total("import", "InvalidArgument"): 1,
            requests_total("list", "OK"): 1,
        },
    )


def test_a_generic_client_using_only_reflection_runs_every_operation(server: RunningServer) -> None:
    """No generated code: the service and message descriptors come from the server's reflection,
    and requests are built and read with protobuf's dynamic messages."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("seqpredict.v1.SequencePredictor")

        def call(method: str, **fields):
            m = service.FindMethodByName(method)
            request_class = message_factory.GetMessageClass(m.input_type)
            response_class = message_factory.GetMessageClass(m.output_type)
            path = f"/{service.full_name}/{method}"
            if m.server_streaming:
                stub = channel.stream_stream(path, request_class.SerializeToString, response_class.FromString)
                return list(stub(iter([request_class(**fields)]), timeout=30))
            stub = channel.unary_unary(path, request_class.SerializeToString, response_class.FromString)
            return stub(request_class(**fields), timeout=30)

        sid = unique_id("generic")
        (scored,) = call("Predict", session_id=sid, text="abc", score=True)
        assert len(scored.token_log_probs) == 3
        forked = call("ForkSession", source_session_id=sid, target_session_id=sid + "-fork")
        assert forked.position == 3
        exported = call("ExportSession", session_id=sid)
        call("EndSession", session_id=sid)
        imported = call("ImportSession", blob=exported.blob)
        assert imported.session_id == sid and imported.position == 3
        page = call("ListSessions", prefix=sid)
        assert [s.session_id for s in page.sessions] == [sid, sid + "-fork"]
