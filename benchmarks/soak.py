"""Soak test: N clients for a set time, every response checked bit for bit against the demo.

Each worker draws its own requests from a seeded RNG (random features, Poisson(20) ids, some
empty; single and `instances` bodies; JSON and msgpack), so every 200 can be checked against the
ids it asked for. Exit 0 only when no answer was wrong, none was lost and no 5xx came back:
fit to gate a release. Without --url it starts the demo (`seqserve serve`) and stops it after.

    .venv/bin/python benchmarks/soak.py [--url http://127.0.0.1:8080] [--clients 64] \\
        [--duration 60] [--out benchmarks/results/soak.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np

from serving.bench import HEADERS, ROOT, start_server, stop_server
from serving.bench.check import feature_bits, mismatch
from serving.commands.demo import demo_spec
from serving.engine import weights


class Stats:
    """One per worker, so the hot loop takes no lock; the progress line reads them racily."""

    def __init__(self) -> None:
        self.sent = self.wrong = self.lost = self.unsent = 0
        self.status: collections.Counter[int] = collections.Counter()
        self.latency: list[float] = []
        self.examples: list[str] = []  # the first few failures, to say what went wrong

    def note(self, what: str) -> None:
        if len(self.examples) < 3:
            self.examples.append(what)


def make_body(rng, rows: dict[str, int]) -> list[dict[str, list[int]]]:
    n = int(rng.integers(1, 5)) if rng.random() < 0.5 else 0  # 0: a single `features` body
    out = []
    for _ in range(max(n, 1)):
        # A feature left out and one sent empty are different requests: test both.
        chosen = [f for f in rows if rng.random() < 0.7]
        lens = {f: 0 if rng.random() < 0.1 else int(rng.poisson(20)) for f in chosen}
        out.append({f: rng.integers(0, rows[f], size=k).tolist() for f, k in lens.items()})
    return out if n else out[:1]


def worker(k, args, target, rows, bits, end, st: Stats) -> None:
    rng = np.random.default_rng([args.seed, k])
    with httpx.Client(timeout=args.timeout) as client:
        while time.monotonic() < end:
            insts = make_body(rng, rows)
            packed = rng.random() < 0.5
            doc = (
                {"instances": [{"features": x} for x in insts]}
                if len(insts) > 1 or rng.random() < 0.2  # some one-item `instances` too
                else {"features": insts[0]}
            )
            head = HEADERS["msgpack" if packed else "json"]
            body = msgpack.packb(doc) if packed else json.dumps(doc).encode()
            t0 = time.perf_counter()
            try:
                r = client.post(target, content=body, headers=head)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                st.unsent += 1  # never left the client: not "lost", but the server is gone
                st.note(f"unsent: {e!r}")
                time.sleep(0.1)
                continue
            except httpx.HTTPError as e:
                st.sent += 1
                st.lost += 1
                st.note(f"lost: {e!r}")
                continue
            st.sent += 1
            st.latency.append(time.perf_counter() - t0)
            st.status[r.status_code] += 1
            if r.status_code != 200:
                st.note(f"{r.status_code}: {r.text[:200]}")
                continue
            try:
                got = msgpack.unpackb(r.content) if packed else r.json()
                maps = got["predictions"] if "instances" in doc else [got]
                if len(maps) != len(insts):
                    why = f"{len(maps)} predictions for {len(insts)} instances"
                else:
                    why = "; ".join(
                        w
                        for m, want in zip(maps, insts, strict=True)
                        if (w := mismatch(m["embeddings"], want, bits, packed))
                    )
            except Exception as e:  # any malformed 200 is a wrong answer, not a crash
                why = f"unreadable 200: {e!r}"
            if why:
                st.wrong += 1
                st.note(f"wrong: {why}")


def total(stats: list[Stats]) -> dict:
    status = sum((s.status for s in stats), collections.Counter())
    return {
        "sent": sum(s.sent for s in stats),
        "answered": sum(status.values()),
        "wrong": sum(s.wrong for s in stats),
        "lost": sum(s.lost for s in stats),
        "unsent": sum(s.unsent for s in stats),
        "status": {str(c): n for c, n in sorted(status.items())},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running demo server; default: start one on a free port")
    ap.add_argument("--model", default="demo", help="model name on the server")
    ap.add_argument("--clients", type=int, default=64, help="concurrent client threads")
    ap.add_argument("--duration", type=float, default=60, help="seconds to keep sending")
    ap.add_argument("--timeout", type=float, default=30, help="per-request timeout, seconds")
    ap.add_argument("--seed", type=int, default=0, help="seeds every worker's requests")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/soak.json")
    args = ap.parse_args()

    spec = demo_spec()
    rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
    bits = feature_bits(spec, weights.full_tables(spec))
    proc = None
    with tempfile.TemporaryDirectory(prefix="seqserve-soak-") as tmp:
        try:
            if args.url:
                url = args.url.rstrip("/")
            else:
                proc, url, _ = start_server("fastapi", Path(tmp))
            target = f"{url}/predictions/{args.model}"
            stats = [Stats() for _ in range(args.clients)]
            t0 = time.monotonic()
            end = t0 + args.duration
            threads = [
                threading.Thread(
                    target=worker, args=(k, args, target, rows, bits, end, st), daemon=True
                )
                for k, st in enumerate(stats)
            ]
            for t in threads:
                t.start()
            next_report = t0 + 10
            for t in threads:
                while t.is_alive():
                    t.join(timeout=max(0.0, next_report - time.monotonic()))
                    if time.monotonic() >= next_report:
                        next_report += 10
                        c = total(stats)
                        print(
                            f"[{time.monotonic() - t0:4.0f} s] sent {c['sent']} wrong {c['wrong']}"
                            f" lost {c['lost']} unsent {c['unsent']} status {c['status']}",
                            file=sys.stderr,
                            flush=True,
                        )
            elapsed = time.monotonic() - t0
        finally:
            if proc is not None:
                stop_server(proc)

    res = total(stats)
    lat = np.array([x for s in stats for x in s.latency]) * 1000  # answered, any status
    five = sum(n for c, n in res["status"].items() if c.startswith("5"))
    res.update(
        req_s=res["sent"] / elapsed,
        p50_ms=float(np.percentile(lat, 50)) if len(lat) else None,
        p99_ms=float(np.percentile(lat, 99)) if len(lat) else None,
        passed=res["wrong"] == 0 and res["lost"] == 0 and res["unsent"] == 0 and five == 0,
        examples=[x for s in stats for x in s.examples][:10],
    )
    ms = {k: "-" if res[k] is None else f"{res[k]:.1f}" for k in ("p50_ms", "p99_ms")}
    statuses = ", ".join(f"{c}: {n}" for c, n in res["status"].items()) or "-"
    print("| sent | answered | wrong | lost | unsent | status | req/s | p50 ms | p99 ms |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    print(
        f"| {res['sent']} | {res['answered']} | {res['wrong']} | {res['lost']} | {res['unsent']}"
        f" | {statuses} | {res['req_s']:.1f} | {ms['p50_ms']} | {ms['p99_ms']} |"
    )
    for x in res["examples"]:
        print(f"  {x}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": shlex.join(sys.argv), "url": args.url or "(started demo)", "result": res}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}; {'PASS' if res['passed'] else 'FAIL'}", file=sys.stderr)
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
