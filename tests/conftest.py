"""Shared fixtures: a real server on 127.0.0.1 (port 0) and ways to reach it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import torch

from seqpredict.models import CharRNN, Checkpoint, Vocabulary, load_checkpoint
from seqpredict.server.app import App, create_server
from seqpredict.server.config import Settings, default_checkpoint
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.badinput import LIMITED as BADINPUT_LIMITS
from tests.bystanders import Bystanders


class RunningServer:
    """The real server, in this process, on its own event loop thread; tests talk gRPC to it."""

    def __init__(self, **overrides: Any) -> None:
        overrides.setdefault("port", 0)
        overrides.setdefault("metrics_port", 0)
        self.settings = Settings(**overrides)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self.thread.start()
        self.app: App = self.call(create_server(self.settings), timeout=120)
        self.address = f"127.0.0.1:{self.app.port}"
        self.metrics_url = f"http://127.0.0.1:{self.app.metrics_port}/metrics"

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self) -> pb_grpc.SequencePredictorStub:
        return pb_grpc.SequencePredictorStub(self.channel())

    def stop(self) -> None:
        try:
            self.call(self.app.stop(grace=1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """One torch thread for the whole run, as the server uses: small matmuls on two shared,
    busy cores spin-wait with more threads and run up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def checkpoint():
    """The shipped default checkpoint, loaded once (the reference model for equivalence tests)."""
    return load_checkpoint(default_checkpoint())


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """One server with default settings, shared by a test module."""
    running = RunningServer()
    yield running
    running.stop()


@pytest.fixture
def stub(server: RunningServer) -> Iterator[pb_grpc.SequencePredictorStub]:
    channel = server.channel()
    yield pb_grpc.SequencePredictorStub(channel)
    channel.close()


# -- the reference model, the small-limits server and bystander sessions (bad-input tests) ------------


@pytest.fixture(scope="module")
def model(checkpoint: Checkpoint) -> CharRNN:
    return checkpoint.build_model()


@pytest.fixture(scope="module")
def vocab(checkpoint: Checkpoint) -> Vocabulary:
    return checkpoint.vocab


@pytest.fixture(scope="module")
def limited() -> Iterator[RunningServer]:
    """A server with small request limits (tokens per request, message size, per-session queue)."""
    running = RunningServer(**BADINPUT_LIMITS)
    yield running
    running.stop()


@pytest.fixture
def bystanders(model: CharRNN, vocab: Vocabulary) -> Bystanders:
    return Bystanders(model, vocab)
