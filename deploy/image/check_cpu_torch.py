"""Fail the image build unless torch is the CPU build of the pinned release.

PyPI's Linux torch is the CUDA build: a 5 GB image that serves no faster on a CPU. pip takes
it without a word whenever the CPU wheel is not where it looks (an unreachable index, a wheel
folder without it, an index URL pointing at PyPI), so the build checks what it got, after
installing torch and again after installing everything else, and stops instead of shipping it.

    python check_cpu_torch.py        exit 0, or 1 with the reasons
"""

from __future__ import annotations

import importlib.metadata
import sys
import warnings

PINNED = "2.13.0"
# Distributions only a GPU build brings along (CUDA runtime libraries, the Triton compiler).
GPU_PREFIXES = ("nvidia-", "triton", "pytorch-triton")


def problems(version: str, cuda: str | None, hip: str | None, distributions: list[str]) -> list[str]:
    """Why this torch must not go into the image; empty when it is the CPU build of PINNED."""
    found = []
    release = version.split("+", 1)[0]
    if release != PINNED:
        found.append(f"torch {version} installed, the project pins torch=={PINNED}")
    if cuda or hip:
        found.append(f"torch {version} is a GPU build (CUDA {cuda}, ROCm {hip}), not the CPU build")
    gpu = sorted(d for d in distributions if d.lower().startswith(GPU_PREFIXES))
    if gpu:
        found.append(f"GPU libraries were installed with it: {', '.join(gpu)}")
    return found


def main() -> int:
    # Right after torch is installed numpy is not there yet; torch's warning about it is noise here.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    try:
        import torch
    except ImportError as exc:
        print(f"check_cpu_torch: torch does not import: {exc}", file=sys.stderr)
        return 1
    names = [d.metadata["Name"] or "" for d in importlib.metadata.distributions()]
    found = problems(torch.__version__, torch.version.cuda, torch.version.hip, names)
    for problem in found:
        print(f"check_cpu_torch: {problem}", file=sys.stderr)
    if found:
        print(
            "check_cpu_torch: refusing to build. Give the CPU wheel with --build-arg TORCH_INDEX_URL=<the PyTorch "
            "CPU index or a mirror of it>, or put torch-2.13.0+cpu…whl in the WHEELS folder (see Dockerfile)",
            file=sys.stderr,
        )
        return 1
    print(f"check_cpu_torch: torch {torch.__version__}, CPU build: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
