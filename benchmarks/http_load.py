"""HTTP load on the FastAPI front: req/s and latency percentiles per concurrency, JSON and msgpack.

Without --url it starts `seqserve serve` (the built-in demo) on a free port and stops it at the
end. Every request names every feature of the model with Poisson(--ids) ids; bodies come from a
pre-encoded, seeded pool so the client loop only sends bytes.

Client: N threads, each with its own synchronous httpx.Client (HTTP/1.1 keep-alive, one
connection each). Measured against one-AsyncClient-N-tasks on the demo (msgpack, 3 s levels,
2-core box): threads cost 0.6-0.9 ms client CPU per request at concurrency 1-32; the async
client cost 1.2-1.5 ms at 1-8 and ~5 ms at 32, where it capped at ~150-190 req/s while threads
reached 700-1070. On a small machine the client shares cores with the server, so its CPU cost is
part of every figure: `client_cpu_ms_per_req` in the JSON says how much.

    .venv/bin/python benchmarks/http_load.py [--url http://127.0.0.1:8080] \\
        [--concurrency 1,8,32] [--duration 10] [--warmup 2] [--formats json,msgpack]
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
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


def make_pool(url: str, model: str, mean_ids: float) -> tuple[dict[str, list[bytes]], list[int]]:
    # Ask the server for its features and table sizes, so --url works for any model.
    spec = httpx.get(f"{url}/models/{model}", timeout=10).raise_for_status().json()
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
    return bodies, ids_per_body


def check(target: str, fmt: str, body: bytes, ids: int) -> None:
    """One request per format before timing: a 200 in the wrong shape would count as success."""
    r = httpx.post(target, content=body, headers=HEADERS[fmt], timeout=60).raise_for_status()
    got = msgpack.unpackb(r.content) if fmt == "msgpack" else r.json()
    rows = [e["shape"][0] if fmt == "msgpack" else len(e) for e in got["embeddings"].values()]
    if sum(rows) != ids:
        raise SystemExit(f"{fmt}: {sum(rows)} embedding rows for {ids} ids")


def run_threads(target, bodies, headers, workers, end):
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
    return results


def run_level(target, fmt, bodies, ids_per_body, workers, warmup, duration):
    start = time.perf_counter() + warmup
    end = start + duration
    cpu0 = time.process_time()
    everything = run_threads(target, bodies, HEADERS[fmt], workers, end)
    cpu = time.process_time() - cpu0  # warm-up included, so divide by every request sent
    # Warm-up excluded: a request counts if it started inside the measured window.
    results = [r for r in everything if r[0] >= start]
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
        "client_cpu_ms_per_req": 1000 * cpu / max(1, len(everything)),
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
    ap.add_argument("--model", default="demo", help="model name on the server")
    ap.add_argument("--ids", type=float, default=20, help="mean ids per feature per request")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/http_load.json")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    formats = args.formats.split(",")
    if unknown := set(formats) - set(HEADERS):
        ap.error(f"unknown formats {sorted(unknown)}; use json, msgpack")

    proc, url = (None, args.url.rstrip("/")) if args.url else start_server()
    try:
        pools, ids_per_body = make_pool(url, args.model, args.ids)
        target, rows = f"{url}/predictions/{args.model}", []
        for fmt in formats:
            check(target, fmt, pools[fmt][0], ids_per_body[0])
            for n in levels:
                print(f"{fmt} concurrency {n} ...", file=sys.stderr, flush=True)
                row = run_level(
                    target, fmt, pools[fmt], ids_per_body, n, args.warmup, args.duration
                )
                rows.append(row)
                cpu = row["client_cpu_ms_per_req"]
                print(f"  {row['req_s']:.1f} req/s, client cpu {cpu:.2f} ms/req", file=sys.stderr)
    finally:
        if proc is not None:
            stop_server(proc)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": shlex.join(sys.argv), "url": args.url or "(started demo)", "results": rows}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
