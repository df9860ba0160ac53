"""The distributed engine over two "hosts" on loopback against one host holding the same
shards: per-batch latency and ids/s, side by side (one run; see docs/performance.md).

Both serve the same 4-rank plan (demo tables, each table's shards interleaved over ranks 0-3)
with the whole batch on rank 0 (dispatch "one", what several hosts need). One engine runs
ranks 0-3 here; the other runs ranks 0-1 here and 2-3 in a `seqserve worker` process that
joins over TCP, as another host would. Calls alternate between the two.

    .venv/bin/python benchmarks/nodes_bench.py [--sizes 1,32,1024] [--reps 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.bench.load import free_port
from serving.commands.demo import DEMO
from serving.config import parse_spec
from serving.engine.distributed.driver import DistributedEngine

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def spec() -> Any:
    raw = json.loads(json.dumps(DEMO))
    raw["sharding"] = {
        "world_size": 4,
        "tables": {
            "items": {"column_wise": [0, 2, 1, 3]},
            "categories": {"column_wise": [3, 1, 2, 0]},
        },
    }
    return parse_spec(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,32,1024")
    ap.add_argument("--reps", type=int, default=30, help="timed calls per size and engine")
    ap.add_argument("--mean-len", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/nodes/nodes_bench.json")
    args = ap.parse_args()
    s = spec()
    port = free_port()
    one = DistributedEngine(s, dispatch="one", threads_per_rank=1)
    two = DistributedEngine(
        s, threads_per_rank=1, nnodes=2, master=("127.0.0.1", port), cluster_key=KEY.encode()
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "serving.commands.cli", "worker", "--master-addr", "127.0.0.1"]
        + ["--master-port", str(port), "--node-rank", "1", "--nnodes", "2", "--cluster-key", KEY],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    results: list[dict[str, Any]] = []
    try:
        one.start()
        two.start()
        rng = np.random.default_rng(0)
        rows = {f: t.num_embeddings for f, t in s.table_of().items()}
        for size in [int(x) for x in args.sizes.split(",")]:
            reqs = [
                {f: rng.integers(0, rows[f], max(1, rng.poisson(args.mean_len))) for f in rows}
                for _ in range(size)
            ]
            ids = sum(len(v) for r in reqs for v in r.values())
            for e in (one, two):
                e.forward(reqs)  # warm: buffers grow to this size once
            times: dict[str, list[float]] = {"one_host": [], "two_hosts": []}
            for _ in range(args.reps):
                for name, e in (("one_host", one), ("two_hosts", two)):
                    t = time.perf_counter()
                    e.forward(reqs)
                    times[name].append(time.perf_counter() - t)
            row: dict[str, Any] = {"requests": size, "ids": ids}
            for name, ts in times.items():
                row[f"{name}_ms"] = statistics.median(ts) * 1e3
                row[f"{name}_ids_per_s"] = ids / statistics.median(ts)
            results.append(row)
            print(
                f"{size} requests ({ids} ids): one host {row['one_host_ms']:.2f} ms, "
                f"two hosts {row['two_hosts_ms']:.2f} ms "
                f"({row['two_hosts_ms'] / row['one_host_ms']:.2f}x)",
                flush=True,
            )
    finally:
        two.close()
        one.close()
        worker.terminate()
        worker.wait(timeout=30)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "reps": args.reps}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
