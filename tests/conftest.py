"""Shared fixtures: a real server on 127.0.0.1 (port 0) and ways to reach it.

The server comes in both shapes the product has: one process (`RunningServer`: in this
process, on its own event loop thread; tests may look inside it) and the default shape —
an engine process behind two gRPC frontend processes under a supervisor (`ProcessServer`:
a child process, seen only from outside). The shared `server` and `limited` fixtures run
every test that uses them against both.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
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
from tests.serverproc import ServerProcess

SERVER_SHAPES = ("one_process", "processes")


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


class ProcessServer:
    """The multi-process server (supervisor, engine process, frontends) as a child process."""

    def __init__(self, frontends: int = 2, **overrides: Any) -> None:
        self.dir = tempfile.mkdtemp(prefix="seqpredict-test-")
        flags = [f"--frontends={frontends}", *_flags(overrides)]
        self.settings = Settings(port=0, metrics_port=0, **overrides)  # what it was started with
        self.process = ServerProcess(Path(self.dir) / "server.log", *flags)
        self.address = self.process.address
        self.metrics_url = self.process.metrics_url

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self) -> pb_grpc.SequencePredictorStub:
        return pb_grpc.SequencePredictorStub(self.channel())

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> None:
        self.process.signal()
        try:
            status = self.process.wait(90)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        assert status == 0, f"the server exited with {status}"


def _flags(overrides: dict[str, Any]) -> list[str]:
    flags = []
    for name, value in overrides.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags.append(f"{flag}={value}")
    return flags


def start_server(shape: str, **overrides: Any) -> RunningServer | ProcessServer:
    """The server in `shape` ("one_process" or "processes") with settings `overrides`."""
    return RunningServer(**overrides) if shape == "one_process" else ProcessServer(**overrides)


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
def server_one_process() -> Iterator[RunningServer]:
    """A one-process server, for tests that look inside it (fault injection, internals)."""
    running = RunningServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server_processes() -> Iterator[ProcessServer]:
    running = ProcessServer()
    yield running
    running.stop()


@pytest.fixture(scope="module", params=SERVER_SHAPES)
def server(request: pytest.FixtureRequest) -> RunningServer | ProcessServer:
    """One server with default settings, shared by a test module — once in each shape."""
    return request.getfixturevalue(f"server_{request.param}")


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
def limited_one_process() -> Iterator[RunningServer]:
    running = RunningServer(**BADINPUT_LIMITS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def limited_processes() -> Iterator[ProcessServer]:
    running = ProcessServer(**BADINPUT_LIMITS)
    yield running
    running.stop()


@pytest.fixture(scope="module", params=SERVER_SHAPES)
def limited(request: pytest.FixtureRequest) -> RunningServer | ProcessServer:
    """A server with small request limits (tokens per request, message size, stream window) — in each shape."""
    return request.getfixturevalue(f"limited_{request.param}")


@pytest.fixture
def bystanders(model: CharRNN, vocab: Vocabulary) -> Bystanders:
    return Bystanders(model, vocab)
