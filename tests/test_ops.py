"""Operations surface: health, reflection, metrics (checked by promtool), generated code freshness."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from seqpredict.server.validation import Validator
from seqpredict.v1 import seqpredict_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


def scrape(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        metric = head.split("{", 1)[0]
        if metric != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_health_is_serving(server):
    stub = health_pb2_grpc.HealthStub(server.channel())
    for service in ("", "seqpredict.v1.SequencePredictor"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(server):
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"seqpredict.v1.SequencePredictor", "grpc.health.v1.Health"} <= names


def test_model_info_describes_the_checkpoint(stub, checkpoint):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.fingerprint == checkpoint.fingerprint
    assert info.architecture.hidden_size == checkpoint.config.hidden_size
    assert list(info.vocabulary) == list(checkpoint.vocab.chars)
    assert list(info.architecture.state_names) == ["h", "c"]
    assert info.state_bytes_per_session == 2 * checkpoint.config.num_layers * checkpoint.config.hidden_size * 4
    assert info.limits.max_tokens_per_request > 0


def test_metrics_move_and_pass_promtool(server, stub, checkpoint):
    before = scrape(server)
    session = f"m-{uuid.uuid4().hex[:8]}"
    requests = [pb.PredictRequest(session_id=session, text="Hello"), pb.PredictRequest(session_id="bad id", text="x")]
    list(stub.Predict(iter(requests), timeout=10))
    list(stub.Generate(pb.GenerateRequest(session_id=session, max_tokens=7, seed=1), timeout=10))
    with contextlib.suppress(grpc.RpcError):
        stub.GetSession(pb.GetSessionRequest(session_id=f"missing-{session}"), timeout=5)
    # The server counts a call as handled just after the client sees its status: let it settle.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(server)
        if sample(after, "grpc_server_handled_total") - sample(before, "grpc_server_handled_total") >= 3:
            break
        assert time.monotonic() < deadline, "handled counters never moved"
        time.sleep(0.05)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    svc = "seqpredict.v1.SequencePredictor"
    assert delta("grpc_server_started_total", grpc_method="Predict", grpc_type="bidi_stream") == 1
    assert delta("grpc_server_handled_total", grpc_method="Predict", grpc_code="OK", grpc_service=svc) == 1
    assert delta("grpc_server_handled_total", grpc_method="GetSession", grpc_code="NotFound") == 1
    assert delta("grpc_server_msg_received_total", grpc_method="Predict") == 2
    assert delta("grpc_server_msg_sent_total", grpc_method="Generate") == 7
    assert delta("grpc_server_handling_seconds_count", grpc_method="Generate") == 1
    assert delta("seqpredict_tokens_consumed_total") == 5
    assert delta("seqpredict_tokens_generated_total") == 7
    assert delta("seqpredict_requests_total", kind="predict", code="InvalidArgument") == 1
    assert delta("seqpredict_sessions_created_total") == 1
    assert delta("seqpredict_request_latency_seconds_count", kind="predict") == 1
    assert delta("seqpredict_request_latency_seconds_count", kind="generate") == 7
    assert delta("seqpredict_batch_size_count") >= 8
    assert sample(after, "seqpredict_model_info", fingerprint=checkpoint.fingerprint) == 1
    assert sample(after, "seqpredict_state_pool_bytes") > 0
    for line in after.splitlines():
        assert "session_id" not in line and session not in line, "labels never carry a session id"
    check = subprocess.run(["promtool", "check", "metrics"], input=after, capture_output=True, text=True, check=False)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr


def test_generated_code_is_fresh():
    """The committed .proto and the generated modules agree (regenerate with `make gen`)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_a_bug_is_internal_with_a_logged_traceback_and_the_server_goes_on(server_one_process, monkeypatch, caplog):
    server = server_one_process  # the bug is injected into the server's own objects
    stub = server.stub()

    class Broken(Validator):
        def session_id(self, value: str) -> str:
            raise RuntimeError("a bug")

    validator = server.app.transport.service.validator
    broken = Broken(validator.vocab, validator.max_tokens_per_request, validator.max_generate_tokens)
    with monkeypatch.context() as patch:
        patch.setattr(server.app.transport.service, "validator", broken)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb.GetSessionRequest(session_id="x"), timeout=5)
        with pytest.raises(grpc.RpcError) as streamed:
            list(stub.Predict(iter([pb.PredictRequest(session_id="x", text="a")]), timeout=5))
    assert err.value.code() == streamed.value.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in err.value.details()
    assert any("unexpected error" in r.message and r.exc_info for r in caplog.records)
    ok = list(stub.Predict(iter([pb.PredictRequest(session_id=f"after-{uuid.uuid4().hex[:6]}", text="a")]), timeout=5))
    assert ok[0].position == 1
