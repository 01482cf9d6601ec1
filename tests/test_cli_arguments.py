"""The CLI as a newcomer types it: numbers that do not fit, --stop "\\n\\n", --version, a draining server.

Every console script runs as a subprocess, as a person runs it; the server is real.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.serverproc import ServerProcess
from tests.test_cli import cli, sid

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("generate", "--session", "s", "--max-tokens", "-5"), "--max-tokens"),
        (("generate", "--session", "s", "--max-tokens", "99999999999"), "--max-tokens"),
        (("generate", "--session", "s", "--max-tokens", "5", "--seed", "-1"), "--seed"),
        (("generate", "--session", "s", "--max-tokens", "5", "--seed", "99999999999999999999"), "--seed"),
        (("generate", "--session", "s", "--max-tokens", "5", "--top-k", "-1"), "--top-k"),
        (("generate", "--session", "s", "--max-tokens", "5", "--expected-position", "-1"), "--expected-position"),
        (("generate", "--session", "s", "--max-tokens", "5", "--stop", "\\q"), "--stop"),
        (("predict", "--session", "s", "--text", "x", "--top-k", "-1"), "--top-k"),
        (("predict", "--session", "s", "--tokens", "99999999999"), "--tokens"),
        (("predict", "--session", "s", "--text", "x", "--expected-position", str(2**64)), "--expected-position"),
        (("predict", "--session", "s", "--expected-incarnation", str(2**64)), "--expected-incarnation"),
        (("generate", "--session", "s", "--max-tokens", "5", "--expected-incarnation", "-1"), "--expected-incarnation"),
        (("session", "fork", "a", "b", "--expected-incarnation", "-1"), "--expected-incarnation"),
        (("session", "export", "a", "--expected-position", "x"), "--expected-position"),
        (("session", "list", "--page-size", "0"), "--page-size"),
        (("session", "list", "--page-size", "1001"), "--page-size"),
        (("session", "list", "--limit", "0"), "--limit"),
        (("--timeout", "0", "health"), "--timeout"),
        (("--timeout", "-5", "health"), "--timeout"),
    ],
)
def test_a_value_that_does_not_fit_exits_2_naming_the_option(server, args: tuple[str, ...], option: str) -> None:
    out = cli(*args, target=server.address)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "ValueError" not in out.stderr, out.stderr
    assert f"error: argument {option}: " in out.stderr.strip().splitlines()[-1], out.stderr


def test_stop_understands_escapes_so_the_readme_example_stops_at_a_blank_line(server) -> None:
    out = cli(
        "generate", "--session", sid(), "--prompt", "ROMEO:", "--max-tokens", "600", "--seed", "1",
        "--temperature", "0.8", "--stop", "\\n\\n",
        target=server.address,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "finished: stop string '\\n\\n'" in out.stderr
    assert out.stdout.endswith("\n\n\n") and out.stdout.count("\n\n") == 1  # the stop string, then the CLI's newline
    helped = subprocess.run([str(BIN / "seqpredict"), "generate", "--help"], capture_output=True, text=True)
    assert "backslash escapes are decoded" in " ".join(helped.stdout.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["seqpredict", "--version"],
        ["seqpredict", "generate", "--version"],
        ["seqpredict", "session", "list", "--version"],
        ["seqpredict-server", "--version"],
        ["seqpredict-train", "--version"],
        ["seqpredict-eval", "--version"],
    ],
)
def test_every_command_says_its_version(argv: list[str]) -> None:
    out = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{argv[0]} 0.1.0 ("), out.stdout


@pytest.fixture
def draining(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server told to stop while a long Generate runs: it drains, refusing new calls, until that ends."""
    server = ServerProcess(tmp_path / "server.log", "--grace-s", "60", "--max-generate-tokens", "1000000")
    channel = grpc.insecure_channel(server.address)
    call = server.stub(channel).Generate(pb.GenerateRequest(session_id="long", max_tokens=1_000_000), timeout=90)
    next(call)  # generating

    def read_until_cancelled() -> None:
        with contextlib.suppress(grpc.RpcError):
            for _ in call:
                pass

    reader = threading.Thread(target=read_until_cancelled, daemon=True)
    reader.start()
    server.signal(signal.SIGTERM)
    try:
        while server.health() != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert server.proc.poll() is None, server.log()
        yield server
    finally:
        call.cancel()
        reader.join(30)
        channel.close()
        assert server.wait(60) == 0, server.log()


@pytest.mark.slow
def test_a_draining_server_is_reported_as_draining_not_as_missing(draining: ServerProcess) -> None:
    out = cli("predict", "--session", sid(), "--text", "x", target=draining.address)
    assert out.returncode == 69, out.stderr
    assert "is draining" in out.stderr and "make run" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1
