"""Cut from the image's virtualenv what serving never uses, after proving that it does not.

Run in the build stage on the installed venv, before the runtime stage copies it:

    python slim.py /opt/seqpredict

First the real server is started in a subprocess of this venv and asked to predict and
generate through the client; every module it imported is listed. If any of them lies in
what is about to be cut, the build fails. Then the cuts are made, what left and what stays
are printed, largest first, and the server is run the same way once more: a cut that serving
needs after all (a file torch opens by path, say) fails the build instead of the image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

# Parts of torch that only building against it or testing it use: folder → (why, what stays).
# `import torch` checks that torch_shm_manager exists (the post-cut run found that out).
TORCH_PARTS = {
    "torch/test": ("C++ unit-test binaries", ()),
    "torch/bin": ("test binaries and a protoc; torch_shm_manager stays", ("torch_shm_manager",)),
    "torch/include": ("C++ headers, for compiling extensions", ()),
    "torch/share": ("CMake files, for building against libtorch", ()),
}
# Whole distributions: torch requires the first three for torch.compile and symbolic shapes,
# which a served model never touches; the installers are not needed once installed.
DISTRIBUTIONS = {
    "sympy": "symbolic maths (torch.compile)",
    "mpmath": "sympy's arithmetic",
    "networkx": "graphs (torch.compile, fx passes)",
    "setuptools": "installer",
    "wheel": "installer",
    "pip": "installer",
}

# The serving path, exercised for real: server up, predict, generate, session info, health.
EXERCISE = """
import asyncio
from seqpredict.client import Client
from seqpredict.server.app import create_server
from seqpredict.server.config import Settings
import seqpredict.server.cli, seqpredict.client.cli

async def main():
    app = await create_server(Settings(port=0, metrics_port=0))
    def calls():
        with Client(f"127.0.0.1:{app.port}") as client:
            session = client.session("slim-check")
            prompt = "ROMEO:\\nBut soft"
            session.feed(prompt)
            tokens = list(session.generate(40, temperature=0.8, top_k=20, top_p=0.95, seed=1))
            assert len(tokens) == 40 and session.info().position == len(prompt) + 40
            assert client.health() == "SERVING"
    try:
        await asyncio.get_running_loop().run_in_executor(None, calls)
    finally:
        await app.stop(grace=1)

asyncio.run(main())
"""
LIST_MODULES = """
import json, sys
print(json.dumps(sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})))
"""


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def mb(n: int) -> str:
    return f"{n / 1e6:7.1f} MB"


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def distribution_files(python: Path, names: list[str]) -> dict[str, list[Path]]:
    """The files pip installed for each distribution that is present (from its RECORD)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: d = m.distribution(name)\n"
        "    except m.PackageNotFoundError: continue\n"
        "    out[name] = [str(d.locate_file(f).resolve()) for f in d.files or []]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True)
    return {name: [Path(f) for f in files] for name, files in json.loads(done.stdout).items()}


def test_dirs(site: Path) -> list[Path]:
    """Packages' own test suites (numpy's and others'), never imported when serving."""
    return sorted(p for p in site.rglob("tests") if p.is_dir() and not p.is_symlink())


def loaded_files(python: Path, code: str, after_cut: bool = False) -> set[Path]:
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        when = "after the cuts: serving needs something removed" if after_cut else "before anything was cut"
        sys.exit(f"slim: the serving check failed {when}:\n{done.stderr[-4000:]}")
    return {Path(f).resolve() for f in json.loads(done.stdout.strip().splitlines()[-1])}


def loaded_by_serving(python: Path) -> set[Path]:
    """Modules serving imports, less those any interpreter start loads (.pth hooks of installers)."""
    return loaded_files(python, EXERCISE + LIST_MODULES) - loaded_files(python, LIST_MODULES)


def main() -> int:
    venv = Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix).resolve()
    python, site = venv / "bin" / "python", site_packages(venv)
    parts: dict[Path, str] = {}
    for rel, (why, stays) in TORCH_PARTS.items():
        folder = site / rel
        if folder.is_dir():
            parts.update({p: why for p in folder.iterdir() if p.name not in stays} if stays else {folder: why})
    dists = distribution_files(python, list(DISTRIBUTIONS))
    # Test suites of the distributions that go anyway are counted with them.
    going = {f.relative_to(site).parts[0] for files in dists.values() for f in files if site in f.parents}
    parts.update({d: "test suite" for d in test_dirs(site) if d.relative_to(site).parts[0] not in going})

    cut_dirs = {p.resolve() for p in parts}
    cut_files = {f for files in dists.values() for f in files}
    needed = [f for f in loaded_by_serving(python) if f in cut_files or not cut_dirs.isdisjoint(f.parents)]
    if needed:
        sys.exit("slim: serving imports files that would be cut:\n" + "\n".join(map(str, needed)))

    removed = 0
    print("slim: serving never imported these; removing them from the image:")
    for rel, (why, _) in TORCH_PARTS.items():
        paths = [p for p, reason in parts.items() if reason == why]
        n = sum(size(p) for p in paths)
        removed += n
        if paths:
            print(f"  {mb(n)}  {rel}  ({why})")
        for path in paths:
            remove(path)
    suites: dict[str, list[Path]] = {}
    for path in (p for p, why in parts.items() if why == "test suite"):
        suites.setdefault(path.relative_to(site).parts[0], []).append(path)
    for package, paths in sorted(suites.items()):
        n = sum(size(p) for p in paths)
        removed += n
        print(f"  {mb(n)}  {package}: {len(paths)} test suite(s)")
        for path in paths:
            remove(path)
    for name, files in dists.items():
        n = sum(f.lstat().st_size for f in files if f.exists())
        removed += n
        print(f"  {mb(n)}  {name}  ({DISTRIBUTIONS[name]})")
    if dists:
        # pip last: it uninstalls the others, then itself.
        order = sorted(dists, key=lambda name: name == "pip")
        subprocess.run([str(python), "-m", "pip", "uninstall", "--yes", "--quiet", *order], check=True)
    print(f"  {mb(removed)}  in all")

    print("slim: what stays in the virtualenv, largest first:")
    entries = sorted(((size(p), p.name) for p in site.iterdir()), reverse=True)
    for n, name in entries[:12]:
        print(f"  {mb(n)}  {name}")
    print(f"  {mb(sum(n for n, _ in entries[12:]))}  {len(entries) - 12} others")
    print(f"  {mb(size(venv))}  the whole virtualenv ({venv})")
    loaded_files(python, EXERCISE + LIST_MODULES, after_cut=True)
    print("slim: the server still starts, predicts and generates: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
