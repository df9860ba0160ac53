"""Faults under load: `seqserve serve --workers N` while one front, then the engine, is SIGKILLed.

64 keep-alive clients (serving.bench.wire, reconnecting after a connection error) post msgpack
requests from a seeded pool; every 200 is checked bit for bit against the demo's weights. At
--kill-front-at seconds one front is SIGKILLed, at --kill-engine-at the engine. Per 0.5 s
bucket: answers by status, connection errors, wrong answers. The summary: steady req/s before
the first kill, the time from each kill until a bucket is back to >= 80% of it, the failures
after each kill. Exit 1 on a wrong answer, a 5xx other than 503, or no 200 in the last 2 s.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/faults_bench.py [--clients 64] [--duration 24] \\
        [--kill-front-at 6] [--kill-engine-at 14] [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from serving.bench import check, load, report, wire
from serving.bench.mix import HEADERS, IdDist, LengthDist, Mix, Pool
from serving.commands.demo import demo_spec
from serving.engine import weights

BUCKET_S = 0.5
RECOVERED = 0.8  # a bucket at >= 80% of the steady rate counts as recovered
END_S = 2.0  # the host must still answer 200s in the run's last seconds
WARMUP_S = 1.0  # the first second opens connections: left out of the steady rate


def log(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


def processes(url: str) -> dict[str, list[int]]:
    """kind -> pids, from /models/demo (any front answers it; {} while none can)."""
    try:
        doc = httpx.get(f"{url}/models/demo", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}
    out: dict[str, list[int]] = {}
    for p in doc.get("processes", []) if isinstance(doc, dict) else []:
        out.setdefault(p["kind"], []).append(p["pid"])
    return out


def start(workers: int, log_file: Any) -> tuple[Any, str]:
    port = load.free_port()
    cmd = load.server_command("fastapi", port, Path(tempfile.gettempdir()))
    proc, url = load.launch([*cmd, "--workers", str(workers)], "seqserve serve", port, log_file)
    try:
        deadline = time.monotonic() + load.READY_TIMEOUT_S
        while len(processes(url).get("front", [])) < workers:
            if time.monotonic() > deadline:
                raise load.NotReady(f"fewer than {workers} fronts in /models/demo")
            time.sleep(0.25)
    except BaseException:
        load.stop_server(proc)
        raise
    return proc, url


async def kill(url: str, kind: str, at: float, t_start: float, events: list[dict]) -> None:
    """SIGKILL one process of `kind` at `at` s, then note when a new one shows in /models/demo
    (the parent's restart; the load's own recovery is read from the buckets)."""
    # The pids are read before the wait: read at `at`, under load, they took 0.2 s to come.
    before = (await asyncio.to_thread(processes, url)).get(kind, [])
    await asyncio.sleep(max(0.0, t_start + at - time.perf_counter()))
    if not before:
        events.append({"kind": kind, "at_s": at, "error": "no such process in /models/demo"})
        return
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    t_kill = time.perf_counter() - t_start
    event = {"kind": kind, "pid": victim, "at_s": round(t_kill, 3), "replaced_after_s": None}
    events.append(event)
    log(f"{t_kill:5.2f} s: SIGKILL {kind} {victim}")
    # Polled slowly: the 2 cores are the load's and the server's.
    for _ in range(120):
        await asyncio.sleep(0.25)
        now = (await asyncio.to_thread(processes, url)).get(kind, [])
        if victim not in now and len(now) >= len(before):
            event["replaced_after_s"] = round(time.perf_counter() - t_start - t_kill, 2)
            event["new_pid"] = [p for p in now if p not in before][0]
            log(f"{kind} {victim} replaced by {event['new_pid']} in {event['replaced_after_s']} s")
            return


def buckets(results: list[wire.Result], wrong_at: list[float], t_start: float) -> list[dict]:
    """Outcomes by the 0.5 s bucket they ended in (a killed front's errors show when they
    happen, not when their request started)."""
    last = max((t0 + lat for t0, lat, _, _ in results), default=t_start) - t_start
    rows = [
        {"t": i * BUCKET_S, "ok": 0, "503": 0, "other": {}, "conn_errors": 0, "wrong": 0}
        for i in range(math.floor(last / BUCKET_S) + 1)
    ]
    for t0, lat, status, _ in results:
        b = rows[int((t0 + lat - t_start) / BUCKET_S)]
        if status == 200:
            b["ok"] += 1
        elif status == 503:
            b["503"] += 1
        elif isinstance(status, int):
            b["other"][str(status)] = b["other"].get(str(status), 0) + 1
        else:
            b["conn_errors"] += 1
            b.setdefault("errors", {})[status] = b.get("errors", {}).get(status, 0) + 1
    for t in wrong_at:
        rows[int((t - t_start) / BUCKET_S)]["wrong"] += 1
    return rows


def after_kill(rows: list[dict], at: float, until: float, steady: float) -> dict[str, Any]:
    """The buckets from `at` to `until`: failures, and when the 200s came back. Recovery is
    the start of the first good bucket after the first bad one (0 when none dipped), measured
    from the kill: a later dip of a shared machine does not move it."""
    window = [r for r in rows if at <= r["t"] < until]
    good = [r["ok"] / BUCKET_S >= RECOVERED * steady for r in window]
    recovery: float | None = 0.0
    if False in good:
        first_bad = good.index(False)
        back = [i for i in range(first_bad, len(good)) if good[i]]
        recovery = round(window[back[0]]["t"] - at, 2) if back else None  # None: never
    other = sum(sum(r["other"].values()) for r in window)
    return {
        "recovery_s": recovery,
        "conn_errors": sum(r["conn_errors"] for r in window),
        "503": sum(r["503"] for r in window),
        "other_status": other,
        "failed": sum(r["conn_errors"] + r["503"] for r in window) + other,
        "wrong": sum(r["wrong"] for r in window),
    }


def table(rows: list[dict], marks: dict[float, str]) -> str:
    lines = ["    t s   200/s   503  other  conn-err  wrong"]
    for r in rows:
        other = ",".join(f"{c}:{n}" for c, n in r["other"].items()) or "0"
        mark = "".join(f"  <- {k}" for t, k in marks.items() if r["t"] <= t < r["t"] + BUCKET_S)
        lines.append(
            f"  {r['t']:5.1f}  {r['ok'] / BUCKET_S:6.0f}  {r['503']:4d}  {other:>5}"
            f"  {r['conn_errors']:8d}  {r['wrong']:5d}{mark}"
        )
    return "\n".join(lines)


async def drive(args: argparse.Namespace, url: str, pool: Pool, bits: Any) -> dict[str, Any]:
    wrong_at: list[float] = []
    examples: list[str] = []
    checked = [0]

    def on_ok(k: int, n: int, t0: float, index: int, body: bytes, head: bytes) -> None:
        # Every 200, at once: a few tens of microseconds of msgpack and numpy each.
        checked[0] += 1
        why = check.check_single(body, "msgpack", pool.requests[index], bits)
        if why:
            wrong_at.append(time.perf_counter())
            if len(examples) < check.MAX_EXAMPLES:
                examples.append(f"request {index}: {why}")

    events: list[dict] = []
    t_start = time.perf_counter()
    clients = wire.run_clients(
        f"{url}/predictions/demo",
        pool.bodies["msgpack"],
        HEADERS["msgpack"],
        args.clients,
        t_start + args.duration,
        on_ok=on_ok,
        timeout=args.timeout,
    )
    results, *_ = await asyncio.gather(
        clients,
        kill(url, "front", args.kill_front_at, t_start, events),
        kill(url, "engine", args.kill_engine_at, t_start, events),
    )
    return {
        "results": results,
        "t_start": t_start,
        "wrong_at": wrong_at,
        "examples": examples,
        "checked": checked[0],
        "events": events,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64, help="keep-alive connections")
    ap.add_argument("--duration", type=float, default=24, help="seconds of load")
    ap.add_argument("--kill-front-at", type=float, default=6, help="s into the load")
    ap.add_argument("--kill-engine-at", type=float, default=14, help="s into the load")
    ap.add_argument("--workers", type=int, default=2, help="front processes")
    ap.add_argument("--timeout", type=float, default=10, help="per-request timeout, s")
    ap.add_argument("--pool", type=int, default=2000, help="distinct requests")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/faults"))
    args = ap.parse_args()
    if not WARMUP_S < args.kill_front_at < args.kill_engine_at < args.duration:
        ap.error(f"need {WARMUP_S} < --kill-front-at < --kill-engine-at < --duration")

    spec = demo_spec()
    mix = Mix.for_spec(
        spec, LengthDist.parse("lognormal:mean=20,sigma=1"), IdDist.parse("zipf:1.1")
    )
    pool = Pool.build(mix, args.pool, ["msgpack"], "demo")
    bits = check.feature_bits(spec, weights.full_tables(spec))
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"starting seqserve serve --workers {args.workers} (its output: {args.out}/server.log)")
    with open(args.out / "server.log", "wb") as server_log:
        proc, url = start(args.workers, server_log)
    try:
        took = load.first_answer(
            f"{url}/predictions/demo", pool.bodies["msgpack"][0], HEADERS["msgpack"]
        )
        first = processes(url)
        log(f"{url}: first answer in {took:.1f} s; processes {first}")
        log(f"{args.clients} clients for {args.duration:g} s ...")
        run = wire.run(drive(args, url, pool, bits))
        after = processes(url)
    finally:
        load.stop_server(proc)  # SIGTERM, then SIGKILL after 30 s
        log(f"server stopped (exit {proc.returncode})")

    t_start = run["t_start"]
    rows = buckets(run["results"], run["wrong_at"], t_start)
    warm = [r for r in rows if WARMUP_S <= r["t"] < args.kill_front_at]
    steady = sum(r["ok"] for r in warm) / (len(warm) * BUCKET_S)
    front = after_kill(rows, args.kill_front_at, args.kill_engine_at, steady)
    engine = after_kill(rows, args.kill_engine_at, math.inf, steady)
    wrong = sum(r["wrong"] for r in rows)
    other_5xx = sum(n for r in rows for c, n in r["other"].items() if c.startswith("5"))
    # The host serves again after both kills (a front that never reconnects fails the run
    # whatever it answered before).
    tail = [
        r for r in rows if r["t"] >= args.duration - END_S and r["t"] + BUCKET_S <= args.duration
    ]
    served_at_end = sum(r["ok"] for r in tail)
    summary = {
        "steady_req_s": round(steady, 1),
        "front_kill": front,
        "engine_kill": engine,
        "requests": len(run["results"]),
        "checked": run["checked"],
        "wrong": wrong,
        "other_5xx": other_5xx,
        "served_at_end": served_at_end,
        "passed": wrong == 0 and other_5xx == 0 and served_at_end > 0,
    }
    marks = {e["at_s"]: f"{e['kind']} killed" for e in run["events"] if "pid" in e}
    for e in run["events"]:
        if e.get("replaced_after_s") is not None:
            marks[e["at_s"] + e["replaced_after_s"]] = f"new {e['kind']} in /models/demo"
    print(table(rows, marks))
    for what, s in (("front", front), ("engine", engine)):
        rec = "never" if s["recovery_s"] is None else f"{s['recovery_s']:.1f} s"
        print(
            f"{what} kill: back to >= {RECOVERED:.0%} of {steady:.0f} req/s after {rec}; "
            f"failed {s['failed']} (conn errors {s['conn_errors']}, 503 {s['503']}, "
            f"other {s['other_status']})"
        )
    for e in run["events"]:
        print(
            f"{e['kind']} {e.get('pid')} killed at {e['at_s']} s, replaced after "
            f"{e.get('replaced_after_s')} s"
        )
    print(
        f"{run['checked']} answers checked, {wrong} wrong; 5xx other than 503: {other_5xx}; "
        f"answered in the last {END_S:.0f} s: {served_at_end}; "
        f"{'PASS' if summary['passed'] else 'FAIL'}"
    )
    for x in run["examples"]:
        log(f"wrong: {x}")
    doc = {
        "command": shlex.join(["python", *sys.argv]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "mix": {"length_dist": str(mix.lengths), "ids": str(mix.ids), "pool": args.pool},
        "environment": report.environment(),
        "processes": {"before": first, "after": after},
        "events": run["events"],
        "summary": summary,
        "wrong_examples": run["examples"],
        "buckets": rows,
    }
    path = args.out / "faults.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    log(f"wrote {path}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
