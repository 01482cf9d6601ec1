"""What a newcomer sees of the packaging and the Makefile: quiet builds, a short first set-up that
says how long it takes, every target in `make help`, and training that never overwrites the
shipped model by itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make") or "make"
# What setuptools prints when it has something to say about the packaging itself.
PACKAGING_WARNINGS = re.compile(r"would be ignored|Deprecat|SetuptoolsWarning|BuildBackendWarning|!!|Traceback")


def make(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAKE, "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_both_distributions_build_without_packaging_warnings(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(tmp_path)]
    done = subprocess.run([*pip, "./client", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    warnings = [line for line in output.splitlines() if PACKAGING_WARNINGS.search(line)]
    # distutils' note that wheels are not byte-compiled while building is the only "warning:" left.
    warnings += [
        line for line in output.splitlines() if "warning:" in line and "byte-compiling is disabled" not in line
    ]
    assert not warnings, "\n".join(warnings)
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.whl")) == ["seqpredict", "seqpredict_client"]


def test_make_help_lists_every_target() -> None:
    text = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:(.*?)(?<!\\)$", text, re.M | re.S).group(1).replace("\\\n", " ").split())
    listed = make("help")
    assert listed.returncode == 0, listed.stderr
    shown = {line.split()[1] for line in listed.stdout.splitlines() if line.startswith("  make ")}
    assert shown == phony, f"not in make help: {sorted(phony - shown)}; not .PHONY: {sorted(shown - phony)}"


def test_make_train_writes_a_run_folder_and_only_ship_model_replaces_the_shipped_checkpoint(tmp_path: Path) -> None:
    shipped = ROOT / "models" / "seqpredict" / "models" / "shipped" / "shakespeare-lstm.pt"
    dry = make("-n", "train", "RUN_DIR=models/runs/test-run")
    out = re.search(r"--out (\S+)", dry.stdout)
    assert out and out.group(1) == "models/runs/test-run/shakespeare-lstm.pt", dry.stdout
    assert str(shipped.relative_to(ROOT)) not in dry.stdout.split("seqpredict-train", 1)[-1]

    before = shipped.read_bytes()
    unfinished = tmp_path / "run"  # a run stopped early: a checkpoint, no training record
    unfinished.mkdir()
    (unfinished / "shakespeare-lstm.pt").write_bytes(b"half-trained")
    refused = make("ship-model", f"RUN={unfinished}")
    assert refused.returncode != 0 and "not a finished run" in refused.stdout + refused.stderr
    assert make("ship-model").returncode == 2
    assert shipped.read_bytes() == before
    copy = make("-n", "ship-model", f"RUN={unfinished}").stdout
    assert f"cp {unfinished}/shakespeare-lstm.pt" in copy and str(shipped.parent.relative_to(ROOT)) in copy


@pytest.mark.slow
def test_first_set_up_is_a_few_lines_that_say_how_long_it_takes(tmp_path: Path) -> None:
    """`make install` in a fresh copy of the tree, as the first `make run` or `make test` does it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True
    )
    fresh = tmp_path / "seqpredict"
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (fresh / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, fresh / name)
    done = make("install", cwd=fresh, timeout=1200)
    output = (done.stdout + done.stderr).strip().splitlines()
    print("\n".join(output))
    assert done.returncode == 0, "\n".join(output)
    assert "first set-up" in output[0] and "minute" in output[0]
    assert output[-1].startswith("ready:")
    assert len(output) <= 8, f"{len(output)} lines"
    assert not [line for line in output if PACKAGING_WARNINGS.search(line) or "WARNING" in line]
    assert (fresh / ".venv" / "bin" / "seqpredict").exists() and (
        fresh / ".venv" / "bin" / "seqpredict-server"
    ).exists()
