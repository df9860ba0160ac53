"""HTTP load on the FastAPI front: req/s and latency percentiles per concurrency, JSON and msgpack.

Without --url it starts `seqserve serve` (the built-in demo) on a free port and stops it at the
end. Every request names every feature of the model with Poisson(--ids) ids; bodies come from a
pre-encoded, seeded pool so the client loop only sends bytes.

Client: CLIENT_DOC

    .venv/bin/python benchmarks/http_load.py [--url http://127.0.0.1:8080] \\
        [--concurrency 1,8,32] [--duration 10] [--warmup 2] [--formats json,msgpack]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
POOL_SIZE = 256
HEADERS = {
    "json": {"Content-Type": "application/json"},
    "msgpack": {"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--port", str(port)]
    # The server's banner goes to our stderr so stdout carries only the table.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/ping", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.25)
    stop_server(proc)
    raise SystemExit("server not ready after 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_pool(url: str, mean_ids: float) -> tuple[str, dict[str, list[bytes]], list[int]]:
    # Ask the server for its features and table sizes, so --url works for any model.
    spec = httpx.get(url + "/models/demo", timeout=10).raise_for_status().json()
    rows = {f: t["num_embeddings"] for t in spec["tables"] for f in t["features"]}
    rng = np.random.default_rng(0)
    bodies: dict[str, list[bytes]] = {"json": [], "msgpack": []}
    ids_per_body = []
    for _ in range(POOL_SIZE):
        doc = {
            "features": {
                f: rng.integers(0, n, size=max(1, rng.poisson(mean_ids))).tolist()
                for f, n in rows.items()
            }
        }
        bodies["json"].append(json.dumps(doc).encode())
        bodies["msgpack"].append(msgpack.packb(doc))
        ids_per_body.append(sum(len(v) for v in doc["features"].values()))
    return spec["name"], bodies, ids_per_body


def run_threads(target, bodies, headers, workers, start, end):
    results = []  # (start, latency, status, body index); list.append is atomic under the GIL

    def worker(k: int) -> None:
        with httpx.Client(headers=headers, timeout=60) as client:
            i = k * 7919  # a different walk through the pool per worker
            while (t0 := time.perf_counter()) < end:
                i = (i + 1) % len(bodies)
                try:
                    status = client.post(target, content=bodies[i]).status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                results.append((t0, time.perf_counter() - t0, status, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r[0] >= start]


def run_async(target, bodies, headers, workers, start, end):
    async def main():
        results = []
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:

            async def worker(k: int) -> None:
                i = k * 7919
                while (t0 := time.perf_counter()) < end:
                    i = (i + 1) % len(bodies)
                    try:
                        status = (await client.post(target, content=bodies[i])).status_code
                    except httpx.HTTPError as e:
                        status = type(e).__name__
                    results.append((t0, time.perf_counter() - t0, status, i))

            await asyncio.gather(*(worker(k) for k in range(workers)))
        return results

    return [r for r in asyncio.run(main()) if r[0] >= start]


def run_level(url, model, fmt, bodies, ids_per_body, workers, warmup, duration, client_kind):
    start = time.perf_counter() + warmup
    end = start + duration
    cpu0 = time.process_time()
    run = run_threads if client_kind == "threads" else run_async
    results = run(f"{url}/predictions/{model}", bodies, HEADERS[fmt], workers, start, end)
    # Warm-up time is in cpu too; scale it to the measured window for a per-request figure.
    cpu = (time.process_time() - cpu0) * duration / (warmup + duration)
    ok = np.array([r[1] for r in results if r[2] == 200]) * 1000
    errors = collections.Counter(str(r[2]) for r in results if r[2] != 200)
    return {
        "format": fmt,
        "concurrency": workers,
        "requests": len(results),
        "req_s": len(results) / duration,
        "ids_s": sum(ids_per_body[r[3]] for r in results if r[2] == 200) / duration,
        "p50_ms": float(np.percentile(ok, 50)) if len(ok) else None,
        "p99_ms": float(np.percentile(ok, 99)) if len(ok) else None,
        "errors": dict(errors),
        "client_cpu_ms_per_req": 1000 * cpu / max(1, len(results)),
    }


def table(rows: list[dict]) -> str:
    def ms(v):
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "| format | concurrency | requests | req/s | ids/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        lines.append(
            f"| {r['format']} | {r['concurrency']} | {r['requests']} | {r['req_s']:.1f} "
            f"| {r['ids_s']:.0f} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {errors} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server; default: start the demo on a free port")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated in-flight requests")
    ap.add_argument("--duration", type=float, default=10, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each")
    ap.add_argument("--formats", default="json,msgpack", help="comma-separated: json, msgpack")
    ap.add_argument("--ids", type=float, default=20, help="mean ids per feature per request")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/http_load.json")
    ap.add_argument("--client", choices=["threads", "async"], default="threads")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    formats = args.formats.split(",")
    if unknown := set(formats) - set(HEADERS):
        ap.error(f"unknown formats {sorted(unknown)}; use json, msgpack")

    proc, url = (None, args.url.rstrip("/")) if args.url else start_server()
    try:
        model, pools, ids_per_body = make_pool(url, args.ids)
        rows = []
        for fmt in formats:
            for workers in levels:
                print(f"{fmt} concurrency {workers} ...", file=sys.stderr, flush=True)
                rows.append(
                    run_level(
                        url, model, fmt, pools[fmt], ids_per_body, workers,
                        args.warmup, args.duration, args.client,
                    )
                )
                print(f"  client cpu {rows[-1]['client_cpu_ms_per_req']:.2f} ms/req", file=sys.stderr)
    finally:
        if proc is not None:
            stop_server(proc)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": " ".join(sys.argv), "url": args.url or "(started demo)", "results": rows}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
