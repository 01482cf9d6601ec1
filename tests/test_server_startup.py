"""What `seqpredict-server` says at start-up when something is off: a taken port (a second `make run`),
a SEQPREDICT_* variable that no setting reads (a misspelt setting).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqpredict.server.envcheck import unknown_variables
from tests.serverproc import ServerProcess


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SEQPREDICT_")} | (env or {})
    argv = [sys.executable, "-m", "seqpredict.server.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environment)


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> ServerProcess:
    server = ServerProcess(tmp_path_factory.mktemp("first") / "server.log")
    yield server
    server.kill()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gRPC", "metrics"])
def test_a_taken_port_is_one_line_that_names_it_and_the_way_out(running: ServerProcess, which: str) -> None:
    if which == "gRPC":
        done = start("--port", str(running.port), "--metrics-port", "0")
        taken, how = f"127.0.0.1:{running.port}", "--port or SEQPREDICT_PORT"
    else:
        done = start("--port", "0", "--metrics-port", str(running.metrics_port))
        taken, how = f"127.0.0.1:{running.metrics_port}", "--metrics-port or SEQPREDICT_METRICS_PORT"
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "add_port" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"cannot start: the {which} port {taken} is already in use" in last, last
    assert how in last and "0 picks a free one" in last


@pytest.mark.slow
def test_unknown_seqpredict_variables_are_warned_about_at_start_up(tmp_path: Path) -> None:
    env = {"SEQPREDICT_MAX_SESION": "3", "SEQPREDICT_COLOUR": "blue", "SEQPREDICT_TARGET": "127.0.0.1:1"}
    server = ServerProcess(tmp_path / "server.log", env=env)
    try:
        log = server.log()
    finally:
        server.kill()
    warnings = [line.split(" seqpredict.server: ", 1)[1] for line in log.splitlines() if " WARNING " in line]
    assert warnings == [
        "SEQPREDICT_COLOUR is not a setting and is ignored; `seqpredict-server --help` lists the settings",
        "SEQPREDICT_MAX_SESION is not a setting and is ignored; did you mean SEQPREDICT_MAX_SESSIONS?",
    ]


def test_unknown_variables_leave_settings_and_the_clis_own_alone() -> None:
    settings = ["SEQPREDICT_PORT", "SEQPREDICT_GRACE_S"]
    environ = {"SEQPREDICT_PORT": "1", "SEQPREDICT_TOKEN": "t", "SEQPREDICT_GRACE": "5", "PATH": "/bin"}
    assert unknown_variables(environ, settings) == [
        "SEQPREDICT_GRACE is not a setting and is ignored; did you mean SEQPREDICT_GRACE_S?"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--durability", "sync"], "durability sync needs state_store"),
        (["--state-store", "redis://127.0.0.1:6379/0", "--durability", "off"], "sessions would never reach the store"),
        (["--state-store", "redis://127.0.0.1:6379/0", "--snapshot-path", "/tmp/x.snap"], "unset one"),
        (["--state-store", "http://127.0.0.1:6379/0"], "the scheme must be one of"),
        (["--state-store", "rediss://h:6380/0?ssl_cert_reqs=none"], "certificate checks off"),
        (["--state-store", "redis://127.0.0.1:6379/0", "--durability", "eventually"], "sync, async or off"),
    ],
)
def test_a_state_store_setting_that_would_lose_or_expose_sessions_is_a_start_up_error(
    args: list[str], message: str
) -> None:
    done = start("--port", "0", "--metrics-port", "0", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_the_state_store_password_is_never_logged(tmp_path: Path) -> None:
    """Started against a store that does not answer: it serves (async, degraded) and says so,
    naming the store without its password."""
    server = ServerProcess(
        tmp_path / "server.log",
        "--durability",
        "async",
        env={"SEQPREDICT_STATE_STORE": "redis://:s3cret-pw@127.0.0.1:9/0"},
    )
    try:
        assert "session store unreachable" in server.log()
        assert "***" in server.log() and "s3cret-pw" not in server.log()
    finally:
        server.kill()
