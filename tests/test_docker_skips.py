"""The Docker tests skip, saying why, when their engine cannot start, and never pass instead; where
the engine must run (CI, SEQPREDICT_DOCKER_REQUIRED=1) that is a failure.

tests/docker runs in a subprocess with a daemon that exits at once (SEQPREDICT_TEST_DOCKERD).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def docker_tests(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SEQPREDICT_")}
    environment.update(SEQPREDICT_TEST_DOCKERD="/bin/false", **env)
    argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "docker", "tests/docker"]
    argv += ["--basetemp", str(tmp_path / "basetemp")]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the engine's start needs root; as a user it skips before dockerd")
def test_an_engine_that_cannot_start_skips_every_docker_test_saying_why(tmp_path: Path) -> None:
    done = docker_tests(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert "skipped" in summary and "passed" not in summary and "failed" not in summary, summary
    assert "skipped, because the Docker engine cannot start here: dockerd exited with 1 at start-up" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the engine's start needs root; as a user it skips before dockerd")
def test_where_the_engine_must_run_that_is_a_failure(tmp_path: Path) -> None:
    done = docker_tests(tmp_path, SEQPREDICT_DOCKER_REQUIRED="1")
    assert done.returncode != 0
    assert "the Docker engine must run here (SEQPREDICT_DOCKER_REQUIRED=1) but cannot" in done.stdout
    assert "passed" not in done.stdout.strip().splitlines()[-1]
