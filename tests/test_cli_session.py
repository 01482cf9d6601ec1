"""`seqpredict session list|show|fork|export|import` as a person runs them: a subprocess, the real
server (both shapes), files and pipes, every error's exit code."""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqpredict.client import Client, SessionInfo
from seqpredict.server.session_blob import _digest
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.bystanders import wait_until
from tests.conftest import SERVER_SHAPES, ProcessServer, RunningServer, start_server
from tests.test_cli import SCRIPT, cli, sid


def cli_bytes(*args: str, target: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The CLI with binary stdin and stdout: export and import through pipes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQPREDICT_")}
    argv = [str(SCRIPT), "--target", target, "--timeout", "10", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60)


def on_a_terminal(*args: str, target: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI with a terminal (a pseudo-terminal) as stdin and stdout, as typed at a prompt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQPREDICT_")}
    argv = [str(SCRIPT), "--target", target, "--timeout", "10", *args]
    ours, terminal = os.openpty()
    try:
        return subprocess.run(argv, stdin=terminal, stdout=terminal, stderr=subprocess.PIPE, env=env, timeout=60)
    finally:
        os.close(terminal)
        os.close(ours)


def made(client: Client, prefix: str, texts: list[str]) -> list[SessionInfo]:
    """Sessions `prefix`0, `prefix`1, ... fed one text each; their bookkeeping as the server has it."""
    infos = []
    for i, text in enumerate(texts):
        session = client.session(f"{prefix}{i}")
        session.feed(text)
        infos.append(session.info())
    return infos


@pytest.fixture(scope="module")
def client(server) -> Iterator[Client]:
    with Client(server.address) as c:
        yield c


# -- list -----------------------------------------------------------------------------------------------
def test_list_pages_through_the_sessions_of_a_prefix_as_a_table(server, client: Client) -> None:
    prefix = sid() + "-"
    infos = made(client, prefix, ["a", "bb", "ccc", "dddd", "eeeee"])
    client.session(prefix[:-1] + "_not_listed").feed("x")
    out = cli("session", "list", "--prefix", prefix, "--page-size", "2", target=server.address)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["position", "incarnation", "last", "used", "expires", "session"]
    assert [row.split() for row in rows] == [
        [str(i.position), str(i.incarnation), i.last_used_at.isoformat(timespec="seconds"),
         i.expires_at.isoformat(timespec="seconds"), i.session_id]
        for i in infos
    ]  # fmt: skip
    assert out.stderr == f"5 sessions whose id starts with {prefix!r}\n"


def test_list_as_json_lines_and_with_a_limit(server, client: Client) -> None:
    prefix = sid() + "-"
    infos = made(client, prefix, ["one", "two", "three"])
    out = cli("session", "list", "--prefix", prefix, "--json", target=server.address)
    assert out.returncode == 0, out.stderr
    listed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(d["session_id"], d["position"], d["incarnation"]) for d in listed] == [
        (i.session_id, i.position, i.incarnation) for i in infos
    ]
    assert all(d["expires_at"].endswith("+00:00") for d in listed)
    limited = cli("session", "list", "--prefix", prefix, "--limit", "2", "--json", target=server.address)
    assert [json.loads(line)["session_id"] for line in limited.stdout.splitlines()] == [i.session_id for i in infos[:2]]
    assert "2 sessions" in limited.stderr and "more follow" in limited.stderr
    exact = cli("session", "list", "--prefix", prefix, "--limit", "3", "--page-size", "1", target=server.address)
    assert len(exact.stdout.splitlines()) == 1 + 3 and "more follow" not in exact.stderr


def test_list_exits_0_and_says_so_when_no_session_matches(server) -> None:
    prefix = sid()
    for extra in ((), ("--json",)):
        out = cli("session", "list", "--prefix", prefix, *extra, target=server.address)
        assert (out.returncode, out.stdout) == (0, ""), out.stderr
        assert out.stderr == f"no sessions whose id starts with {prefix!r}\n"
    bad = cli("session", "list", "--prefix", "not a prefix!", target=server.address)
    assert bad.returncode == 2 and bad.stderr.startswith("seqpredict: "), bad.stderr


# -- show and fork -----------------------------------------------------------------------------------------
def test_show_prints_the_incarnation(server, client: Client) -> None:
    session = client.session(sid())
    session.feed("hello")
    shown = cli("session", "show", session.session_id, target=server.address).stdout
    assert f"incarnation  {session.incarnation}\n" in shown
    data = json.loads(cli("session", "show", session.session_id, "--json", target=server.address).stdout)
    assert (data["position"], data["incarnation"]) == (5, session.incarnation)


def test_fork_copies_the_state_as_a_new_history_and_leaves_the_source_alone(server, client: Client) -> None:
    source, copy = client.session(sid()), sid()
    position = source.feed("ROMEO:\nBut soft").position
    out = cli("session", "fork", source.session_id, copy, target=server.address)
    assert out.returncode == 0, out.stderr
    forked = client.session(copy).info()
    assert forked.incarnation not in (0, source.incarnation) and forked.position == position == 15
    assert out.stdout == f"forked {source.session_id} to {copy}: position 15, incarnation {forked.incarnation}\n"
    there = json.loads(cli("predict", "--session", copy, "--text", ", what", "--json", target=server.address).stdout)
    here = source.feed(", what")
    assert [(t["id"], t["probability"]) for t in there["next"]] == [(t.id, t.probability) for t in here.next]
    assert source.info().incarnation == source.incarnation


def test_fork_guards_and_refusals(server, client: Client) -> None:
    source, target = client.session(sid()), client.session(sid())
    source.feed("abc")
    target.feed("xy")
    fork = ("session", "fork", source.session_id, target.session_id)
    taken = cli(*fork, target=server.address)
    assert taken.returncode == 7 and "--replace" in taken.stderr, taken.stderr
    wrong = cli(*fork, "--replace", "--expected-position", "2", target=server.address)
    assert wrong.returncode == 4 and "expected position 2" in wrong.stderr, wrong.stderr
    wrong = cli(*fork, "--replace", "--expected-incarnation", str(source.incarnation + 1), target=server.address)
    assert wrong.returncode == 4, wrong.stderr
    assert target.info().position == 2, "refusals change nothing"
    guarded = ("--expected-position", "3", "--expected-incarnation", str(source.incarnation))
    replaced = cli(*fork, "--replace", *guarded, "--json", target=server.address)
    assert replaced.returncode == 0 and json.loads(replaced.stdout)["position"] == 3, replaced.stderr
    assert cli("session", "fork", sid(), sid(), target=server.address).returncode == 3
    assert cli("session", "fork", source.session_id, source.session_id, target=server.address).returncode == 2


# -- export and import --------------------------------------------------------------------------------------
def test_export_end_import_continue_through_a_file(server, client: Client, tmp_path: Path) -> None:
    session = client.session(sid())
    session.feed("Now is the winter")
    position, incarnation = session.position, session.incarnation
    blob_file = tmp_path / "session.blob"
    out = cli("session", "export", session.session_id, "--out", str(blob_file), target=server.address)
    assert (out.returncode, out.stdout) == (0, ""), out.stderr
    size = blob_file.stat().st_size
    assert out.stderr == (
        f"exported session {session.session_id}: position {position}, incarnation {incarnation},"
        f" {size} bytes to {blob_file}\n"
    )
    blob = pb.SessionBlob.FromString(blob_file.read_bytes())
    assert (blob.session_id, blob.position, blob.incarnation) == (session.session_id, position, incarnation)
    assert cli("session", "end", session.session_id, target=server.address).returncode == 0
    back = cli("session", "import", str(blob_file), target=server.address)
    assert back.returncode == 0, back.stderr
    assert back.stdout == f"imported session {session.session_id}: position {position}, incarnation {incarnation}\n"
    guard = ("--expected-position", str(position), "--expected-incarnation", str(incarnation))
    goes_on = cli("predict", "--session", session.session_id, "--text", " of", *guard, target=server.address)
    assert goes_on.returncode == 0, "the same position and history: a guarded client continues"
    assert not list(tmp_path.glob(".*partial")), "no partial file is left behind"


def test_export_to_stdout_and_import_from_stdin(server, client: Client) -> None:
    session = client.session(sid())
    session.feed("abc")
    for out_option in ((), ("--out", "-")):
        exported = cli_bytes("session", "export", session.session_id, *out_option, target=server.address)
        assert exported.returncode == 0, exported.stderr
        assert pb.SessionBlob.FromString(exported.stdout).position == 3
        assert b"bytes to stdout" in exported.stderr
    copy = sid()
    imported = cli_bytes(
        "session", "import", "-", "--session", copy, "--json", target=server.address, stdin=exported.stdout
    )
    assert imported.returncode == 0, imported.stderr
    data = json.loads(imported.stdout)
    assert (data["session_id"], data["position"], data["incarnation"]) == (copy, 3, session.incarnation)


def test_binary_is_never_written_to_or_read_from_a_terminal(server, client: Client) -> None:
    session = client.session(sid())
    session.feed("abc")
    for args in (("session", "export", session.session_id), ("session", "import", "-")):
        out = on_a_terminal(*args, target=server.address)
        assert out.returncode == 2 and b"terminal" in out.stderr, out.stderr


def _resigned(blob: bytes, change) -> bytes:
    message = pb.SessionBlob.FromString(blob)
    change(message)
    message.sha256 = _digest(message)
    return message.SerializeToString()


def test_import_refusals_have_their_exit_codes_and_change_nothing(server, client: Client, tmp_path: Path) -> None:
    session = client.session(sid())
    session.feed("abc")
    good = client.export_session(session.session_id).blob
    session.feed("d")
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    cases = {
        "truncated": (good[:-10], 2, "blob"),
        "damaged": (bytes(flipped), 2, "damaged"),
        "not a blob": (b"hello, world", 2, "SessionBlob"),
        "empty": (b"", 2, "empty"),
        "another model": (_resigned(good, lambda b: setattr(b, "model_fingerprint", "0" * 64)), 4, "model"),
        "moved on": (good, 4, "--force"),
    }
    for name, (blob, code, says) in cases.items():
        path = tmp_path / f"{name}.blob"
        path.write_bytes(blob)
        out = cli("session", "import", str(path), target=server.address)
        assert out.returncode == code, (name, out.stderr)
        assert says in out.stderr and out.stderr.count("\n") == 1 and out.stdout == "", (name, out.stderr)
        info = session.info()
        assert (info.position, info.incarnation) == (4, session.incarnation), f"{name}: nothing changed"
    other_model = tmp_path / "another model.blob"
    assert cli("session", "import", str(other_model), "--force", target=server.address).returncode == 4
    assert cli("session", "import", str(tmp_path / "missing.blob"), target=server.address).returncode == 2
    forced = cli("session", "import", str(tmp_path / "moved on.blob"), "--force", target=server.address)
    assert forced.returncode == 0 and session.refresh() == 3, forced.stderr


def test_export_refusals(server, client: Client, tmp_path: Path) -> None:
    session = client.session(sid())
    session.feed("abc")
    missing = cli("session", "export", sid(), "--out", str(tmp_path / "a.blob"), target=server.address)
    assert missing.returncode == 3 and not (tmp_path / "a.blob").exists(), missing.stderr
    guard = ("--expected-incarnation", str(session.incarnation + 1))
    guarded = cli(
        "session", "export", session.session_id, *guard, "--out", str(tmp_path / "b.blob"), target=server.address
    )
    assert guarded.returncode == 4 and not (tmp_path / "b.blob").exists(), guarded.stderr
    nowhere = cli(
        "session", "export", session.session_id, "--out", str(tmp_path / "no" / "c.blob"), target=server.address
    )
    assert nowhere.returncode == 2 and "cannot write" in nowhere.stderr, nowhere.stderr
    kept = tmp_path / "kept.blob"
    kept.write_bytes(b"the previous backup")
    assert cli("session", "export", sid(), "--out", str(kept), target=server.address).returncode == 3
    assert kept.read_bytes() == b"the previous backup", "a failed export leaves the old file alone"


def test_scoring_from_the_cli_equals_the_clients(server, client: Client) -> None:
    text = "To be, or not"
    out = cli("predict", "--session", sid(), "--text", text, "--score", "--json", target=server.address)
    data = json.loads(out.stdout)
    expected = client.session(sid()).feed(text, score=True)
    assert data["token_log_probs"] == pytest.approx(expected.token_log_probs, abs=1e-5)
    assert data["log_prob_sum"] == pytest.approx(math.fsum(data["token_log_probs"]), abs=1e-6)
    assert data["perplexity"] == pytest.approx(math.exp(-data["log_prob_sum"] / len(text)))


# -- a session in the middle of a request -------------------------------------------------------------------
@pytest.fixture(scope="module", params=SERVER_SHAPES)
def long_generations(request: pytest.FixtureRequest) -> Iterator[RunningServer | ProcessServer]:
    """A server whose generations can run until they are cancelled."""
    running = start_server(request.param, max_generate_tokens=1_000_000)
    yield running
    running.stop()


@pytest.mark.slow
def test_forking_onto_a_session_in_the_middle_of_a_generation_exits_8(long_generations) -> None:
    address = long_generations.address
    source, busy = sid(), sid()
    with Client(address) as client:
        client.session(source).feed("abc")
    channel = long_generations.channel()
    generate = pb_grpc.SequencePredictorStub(channel).Generate
    call = generate(pb.GenerateRequest(session_id=busy, max_tokens=1_000_000), timeout=120)
    try:
        next(call)  # generating: the session is in the middle of a request until cancelled
        out = cli("session", "fork", source, busy, "--replace", target=address)
    finally:
        call.cancel()
        channel.close()
    assert out.returncode == 8, out.stderr
    assert "retry" in out.stderr and out.stderr.count("\n") == 1 and out.stdout == ""
    # What exit 8 asks for: once the cancelled generation has stopped, the same command succeeds.
    retry = ("session", "fork", source, busy, "--replace")
    wait_until(lambda: cli(*retry, target=address).returncode == 0, "the fork succeeds on a retry")
