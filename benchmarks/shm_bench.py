"""One large v2 request over binary HTTP against the same request through Triton's system shared
memory (docs/performance.md#shared-memory).

Starts `seqserve serve` on the demo model (item_id: 100000 x 64, float32) with
--allow-shared-memory and limits raised for the request, then times, with tritonclient over
HTTP, `--sequences` sequences of `--length` ids each (item_id plus item_id.lengths):
- binary: ids in the body (binary tensor data), rows back in the body;
- shm: ids read from one /dev/shm region, rows written into another (the HTTP body holds only
  the JSON header), the rows then read from the region as a numpy view.
Both answers are checked to be the same bytes. Prints one JSON object.

    .venv/bin/python benchmarks/shm_bench.py --sequences 4096 --length 64 --reps 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.bench import free_port  # noqa: E402
from serving.commands.demo import DEMO, write_model  # noqa: E402

DIM = 64


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=4096, help="sequences in the request")
    ap.add_argument("--length", type=int, default=64, help="ids per sequence")
    ap.add_argument("--reps", type=int, default=10, help="timed requests per way")
    args = ap.parse_args()
    n = args.sequences * args.length
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp), DEMO)
        port, grpc_port = free_port(), free_port()
        flags = ["--allow-shared-memory", "--max-instances", str(args.sequences)]
        flags += ["--max-queue", str(args.sequences)]
        flags += ["--max-ids-per-request", str(n), "--max-batch-ids", str(n)]
        flags += ["--max-body-bytes", str(n * 8 + args.sequences * 8 + (1 << 20))]
        server = subprocess.Popen(
            [sys.executable, "-m", "serving.commands.cli", "serve", "--model", str(model)]
            + ["--port", str(port), "--grpc-port", str(grpc_port), *flags],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
        )
        try:
            return run(args, n, f"127.0.0.1:{port}")
        finally:
            server.terminate()
            server.wait(60)


def run(args: argparse.Namespace, n: int, url: str) -> int:
    client = th.InferenceServerClient(url, connection_timeout=120, network_timeout=120)
    deadline = time.monotonic() + 300
    while True:
        try:
            if client.is_server_ready():
                break
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not get ready")
        time.sleep(0.2)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100_000, n, dtype=np.int64)
    lengths = np.full(args.sequences, args.length, dtype=np.int64)
    out_bytes = n * DIM * 4

    def binary() -> np.ndarray:
        inputs = [
            th.InferInput("item_id", [n], "INT64"),
            th.InferInput("item_id.lengths", [args.sequences], "INT64"),
        ]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(lengths)
        out = th.InferRequestedOutput("item_id", binary_data=True)
        return client.infer("demo", inputs, outputs=[out]).as_numpy("item_id")

    key = f"/seqserve-bench-{os.getpid()}"
    hin = shm.create_shared_memory_region("bench_in", key + "-in", ids.nbytes + lengths.nbytes)
    hout = shm.create_shared_memory_region("bench_out", key + "-out", out_bytes)
    try:
        shm.set_shared_memory_region(hin, [ids, lengths])
        client.unregister_system_shared_memory()
        client.register_system_shared_memory("bench_in", key + "-in", ids.nbytes + lengths.nbytes)
        client.register_system_shared_memory("bench_out", key + "-out", out_bytes)

        def shared() -> np.ndarray:
            inputs = [
                th.InferInput("item_id", [n], "INT64"),
                th.InferInput("item_id.lengths", [args.sequences], "INT64"),
            ]
            inputs[0].set_shared_memory("bench_in", ids.nbytes)
            inputs[1].set_shared_memory("bench_in", lengths.nbytes, offset=ids.nbytes)
            out = th.InferRequestedOutput("item_id")
            out.set_shared_memory("bench_out", out_bytes)
            client.infer("demo", inputs, outputs=[out])
            return shm.get_contents_as_numpy(hout, np.float32, [n, DIM])

        a, b = binary(), shared()  # warm, and the same bytes both ways
        assert a.tobytes() == b.tobytes(), "shared memory and binary HTTP answers differ"
        results: dict[str, object] = {
            "sequences": args.sequences,
            "ids": n,
            "answer_mb": round(out_bytes / 1e6, 1),
        }
        for name, call in (("binary_http", binary), ("shared_memory", shared)):
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            times.sort()
            results[f"{name}_median_ms"] = round(1000 * times[len(times) // 2], 1)
            results[f"{name}_min_ms"] = round(1000 * times[0], 1)
        results["speedup_median"] = round(
            results["binary_http_median_ms"] / results["shared_memory_median_ms"],
            2,  # type: ignore[operator]
        )
        client.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(hin)
        shm.destroy_shared_memory_region(hout)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
