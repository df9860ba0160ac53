"""Regenerate the Python modules of grpc_service.proto beside it (`make proto`).

protoc's output registers the protocol's messages (`inference.ModelInferRequest`, ...) in
protobuf's default descriptor pool. tritonclient registers its own copy of the same protocol
there, and a second registration of a symbol is an error, so a process holding both (a test, a
user's app that embeds seqserve beside a Triton client) could not import ours. The one line
that names the pool is rewritten to a private pool; the wire format does not change.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # protoc runs from the repository root, so imports read serving.oip...
PROTO = HERE.relative_to(ROOT) / "grpc_service.proto"
DEFAULT_POOL = "_descriptor_pool.Default()"
PRIVATE_POOL = "_descriptor_pool.DescriptorPool()"  # this module's own pool
OUTPUTS = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Write the generated modules into `out`; returns their paths."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}"]
        args += [f"--grpc_python_out={tmp}", str(ROOT / PROTO)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        written = []
        for name in OUTPUTS:
            text = (Path(tmp) / PROTO.parent / name).read_text()
            if name == "grpc_service_pb2.py":
                if text.count(DEFAULT_POOL) != 1:
                    raise RuntimeError(f"expected one {DEFAULT_POOL} in protoc's output")
                text = text.replace(DEFAULT_POOL, PRIVATE_POOL)
            (out / name).write_text(text)
            written.append(out / name)
        return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for path in generate(target):
        print(f"wrote {path}")
    shutil.rmtree(HERE / "__pycache__", ignore_errors=True)
