"""The session's engine and image, shared by every test in tests/docker (`make test-docker`).

The engine is started once and stopped at the end of the session (engine.py). When it cannot
start at all, every test here is skipped with the reason, never passed; with
SEQPREDICT_DOCKER_REQUIRED=1 (CI: this machine's kind runs Docker) that is a failure instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.deployfiles import ROOT
from tests.docker.engine import Engine, EngineUnavailable, progress, start_engine
from tests.docker.images import (
    CACHE,
    IMAGE,
    build_image,
    ensure_base,
    ensure_nginx_and_redis,
    ensure_prometheus,
    torch_cpu_wheel,
)

LOGS = CACHE / "logs"  # the last run's build and compose output, for a failure's details


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/docker/" in str(item.path):
            item.add_marker(pytest.mark.docker)
            # The first test's set-up builds a base and the image (minutes, cold): not a hang.
            item.add_marker(pytest.mark.timeout(1800))


@dataclass
class Summary:
    """What the closing lines of the run report: how each part was obtained and the figures."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)
        progress(line)


@pytest.fixture(scope="session")
def summary() -> Iterator[Summary]:
    report = Summary()
    yield report
    progress(f"summary ({time.monotonic() - report.started:.0f}s for the docker tests):")
    for line in report.lines:
        progress(f"  {line}")


@pytest.fixture(scope="session")
def engine(summary: Summary) -> Iterator[Engine]:
    try:
        running = start_engine()
    except EngineUnavailable as exc:
        if os.environ.get("SEQPREDICT_DOCKER_REQUIRED") == "1":
            pytest.fail(f"the Docker engine must run here (SEQPREDICT_DOCKER_REQUIRED=1) but cannot: {exc}")
        pytest.skip(f"skipped, because the Docker engine cannot start here: {exc}")
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    size_bytes: int
    build_seconds: float


@pytest.fixture(scope="session")
def base_image(engine: Engine, summary: Summary) -> str:
    """The Dockerfile's base image on this engine, pulled or stood in for (images.py)."""
    how = ensure_base(engine)
    summary.add(f"base image: {how}")
    return how


@pytest.fixture(scope="session")
def image(engine: Engine, base_image: str, summary: Summary) -> BuiltImage:
    """The repository's Dockerfile built on this engine, torch handed over as a wheel folder."""
    wheel = torch_cpu_wheel()
    progress(f"building {IMAGE} from the repository (torch from {wheel.relative_to(ROOT)})")
    started = time.monotonic()
    log = LOGS / "image-build.log"
    code = build_image(engine, log, "TORCH_INDEX_URL=")
    seconds = time.monotonic() - started
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert code == 0, f"docker build failed ({code}); whole output in {log}:\n{tail}"
    size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    summary.add(f"{IMAGE} built in {seconds:.0f}s (no cached layers), {size / 1e6:.0f} MB; build log {log}")
    return BuiltImage(IMAGE, size, seconds)


@pytest.fixture(scope="session")
def prometheus_image(engine: Engine, image: BuiltImage, summary: Summary, tmp_path_factory) -> str:
    how = ensure_prometheus(engine, tmp_path_factory.mktemp("prometheus"))
    summary.add(f"Prometheus image: {how}")
    return how


@pytest.fixture(scope="session")
def cluster_images(engine: Engine, base_image: str, summary: Summary, tmp_path_factory) -> list[str]:
    """The cluster profile's nginx and Redis images (images.py)."""
    how = ensure_nginx_and_redis(engine, tmp_path_factory.mktemp("cluster-images"))
    for line in how:
        summary.add(f"cluster image: {line}")
    return how
