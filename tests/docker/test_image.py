"""The image, built from the repository and run on a real engine as the README runs it.

What a user relies on: CPU torch and nothing serving does not use; an unprivileged user that
can write only /data; health SERVING and Docker's HEALTHCHECK healthy; predict, generate and
/metrics through the published ports; `docker stop` drains, exits 0 and writes the snapshot to
the volume; the next start restores the session at its position; a SIGKILLed container comes
back from the last periodic snapshot.
"""

from __future__ import annotations

import json
import time
import uuid

from seqpredict.client import Client
from tests.docker.containers import container_of, metric, scrape
from tests.docker.engine import Engine, progress

# Inside the image: what its venv holds, as JSON.
CONTENTS = r"""
import importlib.metadata as m, json, os, pathlib, sys
import torch
site = pathlib.Path(torch.__file__).parents[1]
def size(p):
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
print(json.dumps({
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "distributions": sorted(d.metadata["Name"].lower().replace("_", "-") for d in m.distributions()),
    "sizes": {p.name: size(p) for p in site.iterdir()},
    "venv": size(pathlib.Path(sys.prefix)),
    "torch_parts": sorted(p.name for p in (site / "torch").iterdir()),
    "torch_bin": sorted(p.name for p in (site / "torch" / "bin").iterdir()),
    "test_dirs": sorted(str(p.relative_to(site)) for p in site.rglob("tests") if p.is_dir()),
}))
"""


def test_image_holds_cpu_torch_and_only_what_serving_uses(engine: Engine, image, summary) -> None:
    done = engine.docker("run", "--rm", "--entrypoint=python", image.tag, "-c", CONTENTS)
    contents = json.loads(done.stdout)
    sizes = sorted(contents["sizes"].items(), key=lambda kv: -kv[1])
    progress(f"the image: {image.size_bytes / 1e6:.0f} MB, of which the virtualenv {contents['venv'] / 1e6:.0f} MB:")
    for name, n in sizes[:8]:
        progress(f"  {n / 1e6:7.1f} MB  {name}")
    progress(f"  {sum(n for _, n in sizes[8:]) / 1e6:7.1f} MB  {len(sizes) - 8} others")
    summary.add(f"image contents: virtualenv {contents['venv'] / 1e6:.0f} MB, torch {contents['torch']}")

    assert contents["torch"] == "2.13.0+cpu" and contents["cuda"] is None
    dists = set(contents["distributions"])
    assert not {d for d in dists if d.startswith(("nvidia-", "triton"))}, "GPU libraries in the image"
    assert {"seqpredict", "seqpredict-client", "grpcio", "prometheus-client", "numpy"} <= dists
    # Cut because serving never uses them (deploy/image/slim.py): build-time tools, training extras,
    # torch.compile's dependencies, C++ headers, test binaries and test suites.
    assert not dists & {"pip", "setuptools", "wheel", "grpcio-tools", "sympy", "networkx", "mpmath"}
    assert not dists & {"tqdm", "matplotlib", "pytest", "hypothesis"}
    assert not {"include", "test", "share"} & set(contents["torch_parts"])
    assert contents["torch_bin"] == ["torch_shm_manager"], "torch checks for it at import"
    assert contents["test_dirs"] == []


def test_image_runs_as_an_unprivileged_user_that_can_write_only_data(engine: Engine, image) -> None:
    script = (
        "id -u; id -g; "
        "find / -xdev -writable ! -path /data 2>/dev/null; "
        "for d in /data /opt/seqpredict /app /tmp /var/tmp /etc /; do "
        '  if touch "$d/.probe" 2>/dev/null; then echo "wrote $d"; fi; done'
    )
    done = engine.docker("run", "--rm", "--entrypoint=sh", image.tag, "-c", script)
    uid, gid, *rest = done.stdout.split("\n")
    assert (uid, gid) == ("10001", "10001")
    assert [line for line in rest if line] == ["wrote /data"], done.stdout


def test_container_serves_drains_on_docker_stop_and_restores_the_session(engine: Engine, image, summary) -> None:
    session, volume = f"docker-{uuid.uuid4().hex[:8]}", f"seqpredict-test-{uuid.uuid4().hex[:8]}"
    with container_of(engine, f"seqpredict-test-{uuid.uuid4().hex[:8]}", volume) as server:
        started = time.monotonic()
        server.wait_healthy()
        summary.add(f"container healthy (HEALTHCHECK and gRPC) {time.monotonic() - started:.1f}s after docker run")

        with Client(server.address, timeout=30) as client:
            assert client.health() == "SERVING"
            feed = client.session(session).feed("ROMEO:")
            text = "".join(t.text for t in client.session(session).generate(20, seed=1, temperature=0.8))
            assert feed.position == 6 and len(text) == 20
            position = client.session(session).info().position
        assert position == 26
        assert metric(scrape(server.metrics_url), "seqpredict_ready") == 1.0
        assert "seqpredict_tokens_generated_total" in scrape(server.metrics_url)

        started = time.monotonic()
        assert server.stop() == 0, f"docker stop must end in exit 0 (drained, not killed):\n{server.logs()}"
        summary.add(f"docker stop: exit 0 after {time.monotonic() - started:.1f}s (grace 30s, stop timeout 45s)")
        logs = server.logs()
        assert "draining" in logs and "snapshot of 1 session(s) written to /data/sessions.snapshot" in logs, logs
        listing = engine.docker(
            "run", "--rm", f"--volume={volume}:/data", "--entrypoint=ls", image.tag, "-ln", "/data"
        ).stdout
        assert "sessions.snapshot" in listing and " 10001 " in listing, listing

        server.start()
        server.wait_healthy()
        assert "restored 1 session(s) from /data/sessions.snapshot" in server.logs()
        with Client(server.address, timeout=30) as client:
            assert client.session(session).info().position == position
            # And it goes on from there: the restored state is the session's, not a fresh one.
            assert client.session(session, strict=True, position=position).feed("O").position == position + 1


def test_sigkilled_container_restarts_from_the_last_periodic_snapshot(engine: Engine, image) -> None:
    session, volume = f"killed-{uuid.uuid4().hex[:8]}", f"seqpredict-test-{uuid.uuid4().hex[:8]}"
    env = {"SEQPREDICT_SNAPSHOT_INTERVAL_S": "1"}
    with container_of(engine, f"seqpredict-test-{uuid.uuid4().hex[:8]}", volume, env=env) as server:
        server.wait_serving()
        with Client(server.address, timeout=30) as client:
            position = client.session(session).feed("To be, or not to be").position
        # A periodic snapshot that started after the feed: two more writes than when it returned.
        written = metric(scrape(server.metrics_url), "seqpredict_snapshot_seconds_count")
        deadline = time.monotonic() + 60
        while metric(scrape(server.metrics_url), "seqpredict_snapshot_seconds_count") < written + 2:
            assert time.monotonic() < deadline, f"no periodic snapshot:\n{server.logs()}"
            time.sleep(0.2)

        server.kill()
        assert server.inspect("{{.State.ExitCode}}") == "137", "SIGKILL: no drain, no final snapshot"
        server.start()
        server.wait_serving()
        assert "restored 1 session(s)" in server.logs()
        with Client(server.address, timeout=30) as client:
            assert client.session(session).info().position == position
