"""Snapshots that cannot be written: visible (exit status, one log line per streak, a counter),
never a silent success, and never at the cost of a file that is not ours."""

from __future__ import annotations

import shutil
import signal
import uuid
from pathlib import Path

import pytest

from seqpredict.v1 import seqpredict_pb2 as pb
from tests.bystanders import Metrics, wait_until
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow


def feed(server: ServerProcess, text: str) -> None:
    sid = f"snap-{uuid.uuid4().hex[:8]}"
    (answer,) = list(server.stub().Predict(iter([pb.PredictRequest(session_id=sid, text=text)]), timeout=30))
    assert answer.position == len(text)


def break_folder(folder: Path) -> None:
    """Make every write into `folder` fail, even as root: the folder becomes a plain file."""
    shutil.rmtree(folder)
    folder.write_text("not a folder any more\n")


def test_a_final_snapshot_that_fails_exits_non_zero_with_one_clear_line(tmp_path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    server = ServerProcess(tmp_path / "server.log", "--snapshot-path", str(folder / "sessions.snapshot"))
    feed(server, "abc")
    break_folder(folder)
    server.signal(signal.SIGTERM)
    assert server.wait(60) == 1, "a drain that lost the sessions is not a success"
    log = server.log()
    assert log.count("final snapshot to") == 1 and "FAILED, 1 session(s) not saved" in log
    assert "exiting with status 1: the final snapshot was not written" in log
    assert "Traceback" not in log


def test_periodic_failures_log_once_per_streak_and_count_every_time(tmp_path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "sessions.snapshot"
    server = ServerProcess(tmp_path / "server.log", "--snapshot-path", str(path), "--snapshot-interval-s", "0.2")
    try:
        feed(server, "abc")
        break_folder(folder)
        failures = lambda: Metrics(server.metrics_url).value("seqpredict_snapshot_failures_total")
        wait_until(lambda: failures() >= 5, "periodic snapshots keep failing")
        assert server.log().count(f"snapshot to {path} failed") == 1, "one line for the whole streak"
        folder.unlink()
        folder.mkdir()
        wait_until(lambda: "succeeded again after" in server.log(), "the streak ends with one line")
        assert "Traceback" not in server.log()
    finally:
        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0


def test_a_file_put_at_the_snapshot_path_while_serving_is_never_overwritten(tmp_path) -> None:
    path = tmp_path / "sessions.snapshot"
    server = ServerProcess(tmp_path / "server.log", "--snapshot-path", str(path))
    feed(server, "abc")
    path.write_text("someone else's file\n")
    server.signal(signal.SIGTERM)
    assert server.wait(60) == 1
    assert path.read_text() == "someone else's file\n"
    assert "was replaced by a file we did not write; not overwriting it" in server.log()


def test_temporaries_left_by_interrupted_writes_are_removed_at_start(tmp_path) -> None:
    path = tmp_path / "sessions.snapshot"
    stale = [tmp_path / f".sessions.snapshot.{i}abc.tmp" for i in range(3)]
    for file in stale:
        file.write_bytes(b"\0" * 1024)
    unrelated = tmp_path / ".other.snapshot.x.tmp"
    unrelated.write_bytes(b"keep")
    server = ServerProcess(tmp_path / "server.log", "--snapshot-path", str(path))
    try:
        assert not any(f.exists() for f in stale)
        assert unrelated.exists(), "only our own temporaries"
        assert server.log().count("left by a snapshot write that was interrupted") == 3
    finally:
        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0
    assert path.exists()
