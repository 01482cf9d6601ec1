"""The client distribution on its own: built as a wheel, installed into a fresh virtualenv that has
no torch, and used against a real server (the CLI and the Python API), as a team calling the
service from its own application would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A virtualenv holding the client wheel and what it depends on, nothing else."""
    tmp = tmp_path_factory.mktemp("client-wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp)]
    run([*pip_wheel, str(ROOT / "client")])
    (wheel,) = tmp.glob("seqpredict_client-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "-qq", str(wheel)])
    return venv


@pytest.mark.slow
def test_client_wheel_brings_no_torch_and_no_server(client_venv: Path) -> None:
    listing = run([str(client_venv / "bin" / "pip"), "list", "--format=json"]).stdout
    installed = {d["name"].lower().replace("_", "-") for d in json.loads(listing)}
    assert {"seqpredict-client", "grpcio", "grpcio-health-checking", "protobuf"} <= installed
    assert not installed & {"torch", "numpy", "prometheus-client", "seqpredict", "grpcio-tools", "sympy"}, installed
    probe = "import importlib.util as u; print([m for m in ('torch', 'seqpredict.server') if u.find_spec(m)])"
    assert run([str(client_venv / "bin" / "python"), "-c", probe]).stdout.strip() == "[]"
    print(f"client virtualenv: {folder_mb(client_venv):.0f} MB, {len(installed)} distributions: {sorted(installed)}")


@pytest.mark.slow
def test_client_wheel_cli_and_library_talk_to_a_running_server(client_venv: Path, server) -> None:
    cli = [str(client_venv / "bin" / "seqpredict"), "--target", server.address, "--timeout", "30"]
    session = f"wheel-{uuid.uuid4().hex[:8]}"
    assert run([*cli, "health"]).stdout.strip() == "SERVING"
    predicted = json.loads(run([*cli, "predict", "--session", session, "--text", "ROMEO:", "--json"]).stdout)
    assert predicted["position"] == 6 and predicted["next"]
    generated = run([*cli, "generate", "--session", session, "--max-tokens", "12", "--seed", "3"])
    assert len(generated.stdout.rstrip("\n")) == 12
    shown = json.loads(run([*cli, "session", "show", session, "--json"]).stdout)
    assert shown["position"] == 18

    library = textwrap.dedent(
        f"""
        from seqpredict.client import Client, NotFound
        with Client({server.address!r}) as client:
            chat = client.session({session!r}, strict=True, position=18)
            assert chat.feed("O").position == 19
            assert sum(1 for _ in chat.generate(5, seed=1)) == 5
            assert chat.info().position == 24
            assert client.health() == "SERVING"
            assert client.model_info().vocab_size > 0
            chat.end()
            try:
                chat.info()
                raise SystemExit("ended session still there")
            except NotFound:
                print("ok")
        """
    )
    assert run([str(client_venv / "bin" / "python"), "-c", library]).stdout.strip() == "ok"
