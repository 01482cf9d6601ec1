"""The server's processes load only what they use: the supervisor and the gRPC frontends never
import torch (it is the engine's), which keeps their start-up short and their memory small."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["seqpredict.server.cli", "seqpredict.server.supervisor", "seqpredict.server.frontend", "seqpredict.server.wire"],
)
def test_the_supervisor_and_the_frontends_never_load_torch(module: str) -> None:
    code = f"import {module}, sys\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", f"importing {module} loads torch"
