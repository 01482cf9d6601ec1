"""Generate TorchServe's gRPC client code from the inference.proto inside its installed jar.

TorchServe documents its gRPC client as code generated from its own proto files with
grpcio-tools, against googleapis-common-protos for google/rpc/status.proto. The proto is read
from the model-server.jar that pip installed, so the client always speaks the API of the
server it drives, and nothing of TorchServe's is copied into this repository.

Run with the TorchServe virtualenv's Python (make bench-peers does):

    bench/peers/.venv-torchserve/bin/python bench/peers/torchserve/stubs.py OUT_DIR
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

PROTO_IN_JAR = "proto/inference.proto"


def jar_path() -> Path:
    """ts/frontend/model-server.jar of the torchserve package this interpreter imports."""
    import ts

    jar = Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"
    if not jar.exists():
        raise SystemExit(f"{jar} not found: is torchserve installed in this interpreter?")
    return jar


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")  # google/protobuf/empty.proto
    import google.rpc  # googleapis-common-protos ships google/rpc/status.proto beside its _pb2

    googleapis = str(Path(next(iter(google.rpc.__path__))).parent.parent)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(jar_path()) as jar:
        proto = Path(tmp) / "inference.proto"
        proto.write_bytes(jar.read(PROTO_IN_JAR))
        args = [
            "protoc",
            f"-I{tmp}",
            f"-I{googleapis}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on TorchServe's inference.proto")
    return sorted(out_dir.glob("inference_pb2*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="where inference_pb2.py and inference_pb2_grpc.py go")
    args = parser.parse_args(argv)
    for path in generate(args.out_dir):
        print(f"generated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
