"""HTTP load on the fronts: req/s and latency percentiles per concurrency, JSON and msgpack.

Without --url it starts the built-in demo on each of --fronts (`seqserve serve`, and
`seqserve torchserve` with its bearer key) on free ports and stops them at the end. Every
request names every feature of the model with Poisson(--ids) ids; bodies come from a
pre-encoded, seeded pool so the client loop only sends bytes.

The fronts' start and stop (with TorchServe's bearer key) and the threaded client loop live in
serving.bench.load, shared with `seqserve bench` and benchmarks/soak.py; its docstring says why
threads. `seqserve bench` is the fuller tool (long-tailed mix, exactness checks, plot).

    .venv/bin/python benchmarks/http_load.py [--url http://127.0.0.1:8080] \\
        [--concurrency 1,8,32] [--duration 10] [--warmup 2] [--formats json,msgpack]
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np

from serving.bench import HEADERS, ROOT, run_threads, start_server, stop_server

POOL_SIZE = 256


def feature_rows(url: str | None, model: str) -> dict[str, int]:
    """Features and table sizes: from a running FastAPI front, or the built-in demo."""
    if url is None:
        from serving.demo import demo_spec

        return {f: t.num_embeddings for f, t in demo_spec().table_of().items()}
    spec = httpx.get(f"{url}/models/{model}", timeout=10).raise_for_status().json()
    return {f: t["num_embeddings"] for t in spec["tables"] for f in t["features"]}


def make_pool(rows: dict[str, int], mean_ids: float) -> tuple[dict[str, list[bytes]], list[int]]:
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


def check(target: str, fmt: str, body: bytes, ids: int, auth: dict[str, str]) -> None:
    """One request per format before timing: a 200 in the wrong shape would count as success."""
    headers = {**HEADERS[fmt], **auth}
    r = httpx.post(target, content=body, headers=headers, timeout=60).raise_for_status()
    got = msgpack.unpackb(r.content) if fmt == "msgpack" else r.json()
    rows = [e["shape"][0] if fmt == "msgpack" else len(e) for e in got["embeddings"].values()]
    if sum(rows) != ids:
        raise SystemExit(f"{fmt}: {sum(rows)} embedding rows for {ids} ids")


def run_level(target, fmt, bodies, ids_per_body, workers, warmup, duration, auth):
    start = time.perf_counter() + warmup
    end = start + duration
    cpu0 = time.process_time()
    everything = run_threads(target, bodies, {**HEADERS[fmt], **auth}, workers, end)
    cpu = time.process_time() - cpu0  # warm-up included, so divide by every request sent
    # Warm-up excluded: a request counts if it started inside the measured window.
    results = [r for r in everything if r[0] >= start]
    ok = np.array([r[1] for r in results if r[2] == 200]) * 1000
    errors = collections.Counter(str(r[2]) for r in results if r[2] != 200)
    return {
        "front": "",
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
        "| front | format | concurrency | requests | req/s | ids/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        lines.append(
            f"| {r['front']} | {r['format']} | {r['concurrency']} | {r['requests']} "
            f"| {r['req_s']:.1f} | {r['ids_s']:.0f} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} "
            f"| {errors} |"
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
    ap.add_argument(
        "--fronts",
        default="fastapi",
        help="without --url: fronts to start on the demo, e.g. fastapi,torchserve",
    )
    ap.add_argument("--ids", type=float, default=20, help="mean ids per feature per request")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/http_load.json")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    formats = args.formats.split(",")
    if unknown := set(formats) - set(HEADERS):
        ap.error(f"unknown formats {sorted(unknown)}; use json, msgpack")

    fronts = args.fronts.split(",")
    if unknown := set(fronts) - {"fastapi", "torchserve"}:
        ap.error(f"unknown fronts {sorted(unknown)}; use fastapi, torchserve")
    servers: dict[str, tuple[subprocess.Popen | None, str, dict[str, str]]] = {}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="seqserve-load-") as tmp:
        try:
            if args.url:
                servers["url"] = (None, args.url.rstrip("/"), {})
            else:
                for front in fronts:
                    servers[front] = start_server(front, Path(tmp))
            pools, ids_per_body = make_pool(feature_rows(args.url, args.model), args.ids)
            for fmt in formats:
                for n in levels:
                    # Fronts back to back at each level: drift on a shared box hits all alike.
                    for front, (_, url, auth) in servers.items():
                        target = f"{url}/predictions/{args.model}"
                        check(target, fmt, pools[fmt][0], ids_per_body[0], auth)
                        print(f"{front} {fmt} concurrency {n} ...", file=sys.stderr, flush=True)
                        row = run_level(
                            target,
                            fmt,
                            pools[fmt],
                            ids_per_body,
                            n,
                            args.warmup,
                            args.duration,
                            auth,
                        )
                        row["front"] = front
                        rows.append(row)
                        print(f"  {row['req_s']:.1f} req/s", file=sys.stderr, flush=True)
        finally:
            for proc, _, _ in servers.values():
                if proc is not None:
                    stop_server(proc)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": shlex.join(sys.argv), "url": args.url or "(started demo)", "results": rows}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
