"""The image build fails, never falls back, when it would not get torch's CPU build.

Two real builds of the repository's Dockerfile that must stop at the torch step: one whose wheel
folder offers a torch reporting CUDA (a tiny stand-in for PyPI's CUDA build, which is 2.5 GB to
download), and one with neither a torch wheel nor an index. Both run fully offline
(INDEX_URL empty) in a build context holding only what the Dockerfile reads before that step.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.deployfiles import ROOT
from tests.docker.engine import Engine
from tests.docker.images import build_image

FAKE_TORCH = {
    "torch/__init__.py": "from torch import version\n__version__ = '2.13.0'\n",
    "torch/version.py": "__version__ = '2.13.0'\ncuda = '12.8'\nhip = None\n",
}


def gpu_torch_wheel(folder: Path) -> Path:
    """A wheel named and versioned like PyPI's torch 2.13.0 that reports a CUDA build."""
    info = "torch-2.13.0.dist-info"
    files = {
        **FAKE_TORCH,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    wheel = folder / "torch-2.13.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def minimal_context(tmp: Path) -> Path:
    """What the build stage reads up to the torch step: the build helpers and a wheel folder."""
    context = tmp / "context"
    (context / "wheels").mkdir(parents=True)
    shutil.copytree(ROOT / "deploy" / "image", context / "deploy" / "image", ignore=shutil.ignore_patterns("*.whl"))
    return context


@pytest.mark.parametrize("offer", ["a CUDA torch", "no torch at all"])
def test_build_stops_at_the_torch_step_instead_of_falling_back(engine: Engine, base_image, tmp_path, offer) -> None:
    context = minimal_context(tmp_path)
    if offer == "a CUDA torch":
        gpu_torch_wheel(context / "wheels")
    log = tmp_path / "build.log"
    tag = "seqpredict-must-not-build:latest"
    code = build_image(engine, log, "TORCH_INDEX_URL=", "INDEX_URL=", "WHEELS=wheels", context=context, tag=tag)
    output = log.read_text()
    assert code != 0, f"the build went on with {offer}:\n{output[-3000:]}"
    failed_step = output.rsplit("Step ", 1)[-1]
    assert "pip install --no-deps $torch_from" in failed_step, f"failed elsewhere than the torch step:\n{failed_step}"
    if offer == "a CUDA torch":
        assert "check_cpu_torch: torch 2.13.0 is a GPU build (CUDA 12.8" in output
        assert "refusing to build" in output
    else:
        assert "No matching distribution found for torch==2.13.0" in output
    assert engine.docker("image", "inspect", tag, check=False).returncode != 0, "no image may come out of it"
