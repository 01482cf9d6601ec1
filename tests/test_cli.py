"""The `seqpredict` console script in a subprocess against the real server: output and exit codes."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from seqpredict.client import Client

SCRIPT = Path(sys.executable).with_name("seqpredict")


def cli(*args: str, target: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQPREDICT_")}
    return subprocess.run(
        [str(SCRIPT), "--target", target, "--timeout", "10", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def sid() -> str:
    return f"cli-{uuid.uuid4().hex}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_help_documents_exit_codes() -> None:
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "6 ", "7 ", "8 ", "69 ", "130 "):
        assert f"\n  {code}" in out.stdout


def test_info_and_health(server, checkpoint) -> None:
    info = cli("info", target=server.address)
    assert info.returncode == 0, info.stderr
    assert checkpoint.fingerprint in info.stdout
    assert "LSTM" in info.stdout and "vocabulary" in info.stdout and "limits" in info.stdout
    as_json = json.loads(cli("info", "--json", target=server.address).stdout)
    assert as_json["vocab_size"] == len(as_json["vocabulary"]) == len(checkpoint.vocab)
    health = cli("health", target=server.address)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")


def test_predict_prints_a_table_and_json(server) -> None:
    session = sid()
    out = cli("predict", "--session", session, "--text", "To be", "--top-k", "3", target=server.address)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "position 5" in lines[0] and "created" in lines[0] and "incarnation " in lines[0]
    assert lines[1].split() == ["rank", "token", "id", "probability", "log-prob"]
    assert len(lines) == 2 + 3 and lines[2].split()[0] == "1"
    data = json.loads(cli("predict", "--session", session, "--tokens", "1,2", "--json", target=server.address).stdout)
    assert (data["position"], data["created"], len(data["next"])) == (7, False, 5)
    assert data["next"][0]["probability"] >= data["next"][1]["probability"]
    steps = cli("predict", "--session", session, "--text", "ab", "--all-steps", target=server.address)
    assert steps.stdout.count("rank") == 2 and "(position 8)" in steps.stdout and "(position 9)" in steps.stdout


def test_predict_score_prints_each_tokens_log_probability_the_sum_and_perplexity(server) -> None:
    text = "ROMEO:"  # no blanks, so the table splits into its columns on whitespace
    out = cli("predict", "--session", sid(), "--text", text, "--score", target=server.address)
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("\n\n")[1].splitlines()
    assert table[0].split() == ["position", "token", "log-prob", "surprisal"]
    rows = [line.split() for line in table[1 : 1 + len(text)]]
    assert [(r[0], r[1]) for r in rows] == [(str(i + 1), repr(ch)) for i, ch in enumerate(text)]
    logps = [float(r[2]) for r in rows]
    assert all(lp <= 0 for lp in logps) and all(r[4] == "bits" for r in rows)
    assert [float(r[3]) for r in rows] == pytest.approx([-lp / math.log(2) for lp in logps], abs=0.01)
    total = re.fullmatch(r"sum of log-probs (\S+) over (\d+) tokens, perplexity (\S+)", table[1 + len(text)])
    assert total is not None, table
    assert float(total[1]) == pytest.approx(sum(logps), abs=1e-3) and int(total[2]) == len(text)
    assert float(total[3]) == pytest.approx(math.exp(-float(total[1]) / len(text)), rel=1e-3)
    nothing = cli("predict", "--session", sid(), "--score", target=server.address)
    assert nothing.returncode == 0 and "nothing scored" in nothing.stdout


def test_the_incarnation_guard(server) -> None:
    session = sid()
    new = cli(
        "predict", "--session", session, "--text", "ab", "--expected-incarnation", "0", "--json", target=server.address
    )
    assert new.returncode == 0, "0: the session must not exist yet"
    incarnation = json.loads(new.stdout)["incarnation"]
    again = cli("predict", "--session", session, "--text", "c", "--expected-incarnation", "0", target=server.address)
    assert again.returncode == 4 and f"incarnation {incarnation}" in again.stderr, again.stderr
    right = ("--expected-incarnation", str(incarnation), "--expected-position", "2")
    assert cli("predict", "--session", session, "--text", "c", *right, target=server.address).returncode == 0
    generate = ("generate", "--session", session, "--max-tokens", "3", "--seed", "1")
    wrong = cli(*generate, "--expected-incarnation", str(incarnation + 1), target=server.address)
    assert (wrong.returncode, wrong.stdout) == (4, ""), wrong.stderr
    ok = cli(*generate, "--expected-incarnation", str(incarnation), target=server.address)
    assert ok.returncode == 0 and f"position 6, incarnation {incarnation}" in ok.stderr, ok.stderr


def test_generate_streams_the_requested_tokens(server) -> None:
    session = sid()
    args = ("generate", "--session", session, "--prompt", "KING:", "--max-tokens", "40", "--seed", "7", "--reset")
    out = cli(*args, target=server.address)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n") and len(out.stdout) == 41
    assert "40 tokens" in out.stderr and "position 45" in out.stderr and "max_tokens" in out.stderr
    with Client(server.address) as client:
        same = client.session(sid()).generate_text(40, prompt="KING:", seed=7)
    assert out.stdout[:-1] == same


def test_session_show_and_end(server) -> None:
    session = sid()
    cli("predict", "--session", session, "--text", "hello", target=server.address)
    show = cli("session", "show", session, target=server.address)
    assert show.returncode == 0 and "position" in show.stdout and "5" in show.stdout
    data = json.loads(cli("session", "show", session, "--json", target=server.address).stdout)
    assert data["position"] == 5 and data["created_at"].endswith("+00:00")
    end = cli("session", "end", session, target=server.address)
    assert end.returncode == 0 and "position 5" in end.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("session", "show", "cli-never-created"), 3),
        (("session", "end", "cli-never-created"), 3),
        (("session", "fork", "cli-never-created", "cli-never-copied"), 3),
        (("session", "export", "cli-never-created"), 3),
        (("predict", "--session", "not a valid id!", "--text", "x"), 2),
        (("predict", "--session", "cli-mismatch", "--text", "x", "--expected-position", "7"), 4),
        (("predict", "--session", "cli-bad-char", "--text", "\u20ac"), 2),
        (("health", "--service", "no.such.Service"), 3),
    ],
)
def test_error_exit_codes(server, args: tuple[str, ...], code: int) -> None:
    out = cli(*args, target=server.address)
    assert out.returncode == code, out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith("seqpredict: ") and out.stderr.count("\n") == 1  # one clear line


def test_usage_errors_exit_2(server) -> None:
    out = cli("predict", "--session", "cli-bad-tokens", "--tokens", "a,b", target=server.address)
    assert out.returncode == 2 and "comma-separated token ids" in out.stderr
    out = cli("predict", "--session", "x", "--text", "a", "--tokens", "1", target=server.address)
    assert out.returncode == 2 and "not allowed with" in out.stderr


def test_server_down_exits_69_with_advice() -> None:
    out = cli("info", target=f"127.0.0.1:{closed_port()}")
    assert out.returncode == 69
    assert out.stderr.startswith("seqpredict: ") and "make run" in out.stderr
    assert out.stderr.count("\n") == 1
