"""Regenerate the Python code for protos/seqpredict/v1/*.proto (never edit the output by hand).

    python protos/generate.py            write *_pb2.py, *_pb2.pyi, *_pb2_grpc.py next to the .proto
    python protos/generate.py --check    exit 1 if the files there differ from a fresh generation

Compiled with -Iprotos so protoc emits `from seqpredict.v1 import ...`: nothing is patched.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = Path("seqpredict") / "v1"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted((HERE / PACKAGE).glob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{HERE}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(HERE)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / PACKAGE).glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        for path in generate(HERE):
            print(f"generated {path.relative_to(HERE.parent)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [
            p.name
            for p in fresh
            if not (HERE / PACKAGE / p.name).exists() or not filecmp.cmp(p, HERE / PACKAGE / p.name, shallow=False)
        ]
    if stale:
        print(f"stale generated code: {', '.join(stale)}; run `make gen`", file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
