"""Live weight updates, measured on a real server (one run; see docs/performance.md).

The demo model with its big table, `items` (dim 64, column-wise [0, 1, 0, 1] over 2 ranks),
grown to 1M rows so that a 1M-row delta has unique ids:

1. delta throughput: rows/s of 1k, 100k and 1M-row deltas, from POST to reply (upload, checks,
   encoding and the commit between batches), median of 3;
2. readers: the p50/p99 of 16 concurrent readers (JSON, 20 item ids each) alone, then during a
   stream of 1k-row deltas (10 a second), then of 100k-row deltas (1 a second), side by side;
3. a full reload of every table from a safetensors file: its time and the server's resident
   memory before, at peak (VmHWM) and after.

    .venv/bin/python benchmarks/update_bench.py [--seconds 8] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import save

from serving.bench.load import free_port, launch, server_command, stop_server
from serving.commands.demo import DEMO, write_model

OCTET = {"Content-Type": "application/octet-stream"}
DIM = 64


def delta(rows: int, table_rows: int, rng: np.random.Generator) -> bytes:
    ids = rng.permutation(table_rows)[:rows].astype(np.int64)
    values = rng.standard_normal((rows, DIM)).astype(np.float32) * 0.01
    return save({"items.ids": ids, "items.rows": values})


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def readers(url: str, seconds: float, clients: int, rows: int) -> list[float]:
    """Latencies (s) of `clients` loops posting 20-id JSON requests for `seconds`."""
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def loop(k: int) -> None:
        rng = np.random.default_rng(k)
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            while time.monotonic() < end:
                ids = rng.integers(0, rows, 20).tolist()
                t = time.perf_counter()
                r = await c.post("/predictions/demo", json={"features": {"item_id": ids}})
                latencies.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text

    await asyncio.gather(*(loop(k) for k in range(clients)))
    return latencies


def stream(url: str, body: bytes, every_s: float, stop: threading.Event, done: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=600) as c:
        while not stop.is_set():
            t = time.perf_counter()
            r = c.post("/models/demo/weights", content=body, headers=OCTET)
            assert r.status_code == 200, r.text
            done.append(time.perf_counter() - t)
            stop.wait(max(0.0, every_s - (time.perf_counter() - t)))


def percentiles(latencies: list[float]) -> dict[str, float]:
    q = np.quantile(np.asarray(latencies) * 1e3, [0.5, 0.99])
    return {"requests": len(latencies), "p50_ms": float(q[0]), "p99_ms": float(q[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="per reader phase")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the items table")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/updates/update_bench.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="update-bench-"))
    raw = json.loads(json.dumps(DEMO))
    raw["tables"][0]["num_embeddings"] = args.rows
    model = write_model(work / "model", raw)
    port = free_port()
    cmd = [*server_command("fastapi", port, work, model), "--allow-updates"]
    proc, url = launch(cmd, "seqserve", port)
    result: dict[str, Any] = {"rows": args.rows, "dim": DIM, "clients": args.clients}
    try:
        with httpx.Client(base_url=url, timeout=600) as c:
            result["deltas"] = {}
            for k in (1_000, 100_000, 1_000_000):
                k = min(k, args.rows)
                body = delta(k, args.rows, rng)
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    r = c.post("/models/demo/weights", content=body, headers=OCTET)
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                s = statistics.median(times)
                result["deltas"][k] = {"seconds": s, "rows_per_s": k / s, "mb": len(body) / 1e6}
                print(
                    f"delta of {k} rows: {s * 1e3:.0f} ms, {k / s / 1e6:.2f} M rows/s", flush=True
                )
            result["readers"] = {}
            for name, rows, every in (
                ("alone", 0, 0.0),
                ("1k/0.1s", 1_000, 0.1),
                ("100k/1s", 100_000, 1.0),
            ):
                stop, done = threading.Event(), []  # type: ignore[var-annotated]
                writer = None
                if rows:
                    body = delta(rows, args.rows, rng)
                    writer = threading.Thread(target=stream, args=(url, body, every, stop, done))
                    writer.start()
                lat = asyncio.run(readers(url, args.seconds, args.clients, args.rows))
                stop.set()
                if writer is not None:
                    writer.join()
                result["readers"][name] = {**percentiles(lat), "deltas_applied": len(done)}
                print(f"readers, {name}: {result['readers'][name]}", flush=True)
            weights = model.parent / "weights.safetensors"
            before = memory_kib(proc.pid)
            t = time.perf_counter()
            r = c.post("/models/demo/weights", json={"safetensors": str(weights)})
            took = time.perf_counter() - t
            assert r.status_code == 200, r.text
            after = memory_kib(proc.pid)
            result["reload"] = {
                "seconds": took,
                "weights_mb": weights.stat().st_size / 1e6,
                "rss_before_mb": before["VmRSS"] / 1024,
                "peak_mb": after["VmHWM"] / 1024,
                "rss_after_mb": after["VmRSS"] / 1024,
            }
            print(f"reload: {result['reload']}", flush=True)
    finally:
        stop_server(proc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
