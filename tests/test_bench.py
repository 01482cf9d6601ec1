"""Smoke test of the benchmark's moving parts: the echo server and the load generator, end to end.

`make bench` takes minutes and is run by hand; this keeps its tools from rotting in between.
It checks that answers come back without errors, never how fast (timings on a shared CI box
mean nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def run_loadgen(target: str) -> dict[str, Any]:
    """Two ping-pong sessions for ~2 s, in a process of their own like in the benchmark."""
    argv = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--target",
        target,
        "--mode",
        "pingpong",
        "--sessions",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--connect-timeout",
        "20",
        "--json",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def echo_address() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "echo_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = proc.stdout.readline()  # type: ignore[union-attr]
        assert first_line, proc.stderr.read()  # type: ignore[union-attr]
        yield f"127.0.0.1:{json.loads(first_line)['port']}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_loadgen_against_the_echo_server(echo_address: str) -> None:
    result = run_loadgen(echo_address)
    assert result["tokens"] > 0
    assert result["error_count"] == 0, result["errors"]
    assert result["vocab_size"] == 82


def test_loadgen_against_our_server(server: RunningServer) -> None:
    result = run_loadgen(server.address)
    assert result["tokens"] > 0
    assert result["error_count"] == 0, result["errors"]
    assert result["tokens_total"] >= result["tokens"]
