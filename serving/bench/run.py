"""`seqserve bench`: the reference lines, then every front x format x concurrency level.

Levels run concurrency by concurrency, the formats and fronts back to back at each level so
drift on a shared machine hits them alike; the HTTP ceiling (serving.bench.ceiling), when
on, runs last at each level as one more "front". The native formats (json, msgpack) go to
POST /predictions/{model}; the Open Inference Protocol v2 ones to the fronts that speak it
(seqserve's own, started or at --url): v2-binary over REST on the same port, v2-grpc to its gRPC
port (serving.bench.rpc). A sample of answers is checked bit for bit against the model's
weights; any wrong answer makes the exit status 1.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving.bench import ceiling, check, cpu, load, report, rpc, v2, wire
from serving.bench.mix import FORMATS, HEADERS, IdDist, LengthDist, Mix, Pool, encode
from serving.config import ModelSpec


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _csv(text: str, what: str, allowed: Sequence[str] | None = None) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"{what}: give at least one value")
    if allowed is not None and (unknown := sorted(set(items) - set(allowed))):
        raise ValueError(f"{what}: unknown {unknown}; use {', '.join(allowed)}")
    return items


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in _csv(text, "--concurrency")]
    except ValueError as e:
        raise ValueError(f"--concurrency {text!r}: comma-separated integers ({e})") from None
    if min(levels) < 1:
        raise ValueError(f"--concurrency {text!r}: every level must be >= 1")
    return levels


def _fronts(text: str) -> list[str]:
    """--compare's names, checked: fastapi, fastapi:N (N workers), torchserve; each once (a
    name labels its rows and its log)."""
    fronts = _csv(text, "--compare")
    for front in fronts:
        load.parse_front(front)
    if len(set(fronts)) < len(fronts):
        raise ValueError(f"--compare {text!r}: each front once")
    return fronts


def _seqserve(front: str) -> bool:
    """A front that is `seqserve serve` (any worker count): it speaks v2 and lists its
    processes."""
    return load.parse_front(front)[0] == "fastapi"


def _spec(model: Path | None) -> ModelSpec:
    from serving.commands.demo import demo_spec
    from serving.config import load_spec

    return load_spec(model) if model else demo_spec()


def _check_args(args: argparse.Namespace) -> None:
    if not args.duration > 0 or not args.warmup >= 0 or not args.reference_duration >= 0:
        raise ValueError("--duration must be > 0; --warmup and --reference-duration >= 0")
    counts = (args.pool, args.reference_batch)
    if min(counts) < 1 or min(args.check_every, args.reference_threads) < 0:
        raise ValueError(
            "--pool and --reference-batch must be >= 1, --check-every and --reference-threads >= 0"
        )


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    levels = _levels(args.concurrency)
    formats = _csv(args.formats, "--formats", FORMATS)
    fronts = _fronts(args.compare) if args.compare else ["url"]
    grpc = rpc.address(args.grpc_url, args.url) if args.url and v2.GRPC in formats else None
    if args.grpc_url and not args.url:
        raise ValueError("--grpc-url goes with --url; --compare picks the gRPC port itself")
    if args.compare and not set(formats) <= set(HEADERS) and not any(map(_seqserve, fronts)):
        raise ValueError(f"--formats {args.formats}: the v2 formats need a fastapi front")
    spec = _spec(args.model)
    name = args.model_name or spec.name
    mix = Mix.for_spec(
        spec, LengthDist.parse(args.length_dist), IdDist.parse(args.ids), args.subset, args.seed
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("benchmarks/results") / f"bench-{stamp}"

    log(f"model '{name}' ({args.model or 'built-in demo'}); mix {mix.lengths}, ids {mix.ids}")
    pool = Pool.build(mix, args.pool, formats, name)
    from serving.engine import weights

    tables = weights.full_tables(spec)
    bits = check.feature_bits(spec, tables)
    references: list[dict[str, Any]] = []
    if args.reference_duration > 0:
        from serving.bench import reference

        log(f"reference lines, {args.reference_duration:g} s each ...")
        references = reference.measure(
            spec,
            tables,
            pool.requests,
            args.reference_batch,
            args.reference_duration,
            args.reference_threads,
        )
        for x in references:
            log(f"  {x['name']}: {report.rate(x['ids_s'])} ids/s")
    # Off by default with --url: that server may run elsewhere (a container, another machine),
    # where a ceiling measured here says little about it.
    with_ceiling = bool(args.compare) if args.ceiling is None else args.ceiling
    native = [f for f in formats if f in HEADERS]  # the ceiling stands for the native route
    answers: dict[str, bytes] = {}
    about = None
    if with_ceiling and native:
        answers, about = ceiling.typical_answers(pool, bits, native)
        log(f"the HTTP ceiling answers request {about['request']}: {about['answer_bytes']} bytes")
    elif with_ceiling:
        log("no HTTP ceiling: it answers the native formats (json, msgpack) only")

    rows, examples = _measure(args, out, fronts, formats, levels, name, pool, bits, answers, grpc)
    wrong = sum(r["wrong"] for r in rows)
    doc = {
        "command": shlex.join(["seqserve", *sys.argv[1:]]),
        "started": stamp,
        "target": {
            "url": args.url,
            "grpc_url": grpc,
            "compare": fronts if args.compare else None,
            "model": str(args.model) if args.model else "built-in demo",
            "model_name": name,
        },
        "settings": {
            "concurrency": levels,
            "formats": formats,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "check_every": args.check_every,
            "timeout_s": args.timeout,
            "reference_duration_s": args.reference_duration,
            "reference_batch": args.reference_batch,
            "reference_threads": args.reference_threads,
            "ceiling": bool(answers),
            "grpc_channels": args.grpc_channels if v2.GRPC in formats else None,
        },
        "mix": {
            "length_dist": str(mix.lengths),
            "ids": str(mix.ids),
            "subset": mix.subset,
            "seed": mix.seed,
            "pool": args.pool,
            "mean_ids_per_request": float(np.mean(pool.ids)),
            "features": list(mix.rows),
        },
        "environment": report.environment(),
        "references": references,
        "ceiling": about,
        "results": rows,
        "comparisons": report.comparisons(rows, references),
        "checked": sum(r["checked"] for r in rows),
        "wrong": wrong,
        "wrong_examples": examples[: check.MAX_EXAMPLES],
    }
    out.mkdir(parents=True, exist_ok=True)
    path = report.write_json(out, doc)
    png = report.plot(out, rows, references)
    print(report.table(rows, references))
    for x in doc["wrong_examples"]:
        log(f"wrong: {x}")
    log(f"wrote {path} and {png}")
    if wrong:
        log(f"FAIL: {wrong} wrong answers of {doc['checked']} checked")
        return 1
    return 0


@dataclass(frozen=True)
class Front:
    """A server the levels run against: one the bench started (its process), --url, or the
    HTTP ceiling."""

    name: str
    proc: subprocess.Popen[bytes] | None
    url: str
    auth: dict[str, str]
    grpc: str | None = None  # host:port of its v2 gRPC, where it has one
    v2: bool = False  # speaks the Open Inference Protocol v2 (seqserve's own front)
    workers: int = 1  # its front processes (seqserve serve --workers)

    def speaks(self, fmt: str) -> bool:
        return fmt in HEADERS or (self.v2 and (fmt != v2.GRPC or self.grpc is not None))


def _path(fmt: str, name: str) -> str:
    return f"/v2/models/{name}/infer" if fmt == v2.REST else f"/predictions/{name}"


def _headers(fmt: str) -> dict[str, str]:
    return HEADERS.get(fmt) or (v2.REST_HEADERS if fmt == v2.REST else {})


def _measure(
    args: argparse.Namespace,
    out: Path,
    fronts: list[str],
    formats: list[str],
    levels: list[int],
    name: str,
    pool: Pool,
    bits: Mapping[str, np.ndarray],
    answers: Mapping[str, bytes],
    grpc: str | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Start the fronts (or reach --url, its gRPC at `grpc`) and the ceiling with `answers`
    (none: no ceiling), then every level; the rows and wrong answers. Whatever happens, the
    servers it started are stopped."""
    rows: list[dict[str, Any]] = []
    examples: list[str] = []
    servers: list[Front] = []
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as tmp:
        try:
            out.mkdir(parents=True, exist_ok=True)  # the servers' logs go there
            if args.url:
                url, auth = args.url.rstrip("/"), _token(args.token)
                servers.append(Front("url", None, url, auth, grpc, v2=True))
                _reachable(url, auth)
            else:
                for front in fronts:
                    servers.append(_start(args, front, out, Path(tmp)))
            if answers:
                log(f"starting the HTTP ceiling (its output: {out}/ceiling.log) ...")
                with open(out / "ceiling.log", "wb") as server_log:
                    top, top_url = ceiling.start(answers, Path(tmp) / "ceiling", server_log)
                    servers.append(Front("ceiling", top, top_url, {}))
            for s in servers:
                _first_answers(args, s, formats, name, pool)
                if s.workers > 1:
                    _all_fronts_listed(s, name)
            for s in servers:
                for fmt in formats:
                    if not s.speaks(fmt) and s.name != "ceiling":
                        log(f"{s.name} does not speak {fmt}: skipped")
            for n in levels:
                for fmt in formats:
                    # Formats and fronts back to back at each level: drift on a shared box
                    # hits them all alike.
                    for s in filter(lambda s: s.speaks(fmt), servers):
                        row, sampler = _level(args, pool, bits, s, name, fmt, n)
                        rows.append(row)
                        examples += sampler.examples
        except load.NotReady as e:
            started = not args.url or answers
            where = f" (server output: {out}/<front>.log)" if started else ""
            raise ValueError(f"{e}{where}") from None
        finally:
            for s in servers:
                if s.proc is not None:
                    load.stop_server(s.proc)
    return rows, examples


def _start(args: argparse.Namespace, front: str, out: Path, tmp: Path) -> Front:
    """Start `front` (a --compare name) with its output in `out`/<name>.log."""
    path = out / f"{front.replace(':', '-')}.log"  # fastapi:2 -> fastapi-2.log
    log(f"starting {front} (its output: {path}) ...")
    seqserve = _seqserve(front)
    port = load.free_port() if seqserve else None
    with open(path, "wb") as server_log:
        proc, url, auth = load.start_server(front, tmp / front, args.model, server_log, port)
    where = None if port is None else f"127.0.0.1:{port}"
    workers = load.parse_front(front)[1]
    return Front(front, proc, url, auth, where, v2=seqserve, workers=workers)


def _all_fronts_listed(front: Front, name: str, timeout: float = 10) -> None:
    """Wait until `front` lists all its front processes: its engine lists only those it has
    heard from, and one missing would count as "other" in the CPU by kind."""
    deadline = time.monotonic() + timeout
    while True:
        listed = load.processes(front.url, name, front.auth)
        seen = sum(kind == "front" for kind in listed.values())
        if seen >= front.workers:
            return
        if time.monotonic() > deadline:
            log(f"warning: {front.name} lists {seen} of its {front.workers} front processes")
            return
        time.sleep(0.25)


def _first_answers(
    args: argparse.Namespace, front: Front, formats: list[str], name: str, pool: Pool
) -> None:
    """A first 200 from `front` on each route the levels use (TorchServe answers /ping before
    its worker has loaded the model; a wrong --grpc-url fails here, in one line)."""
    native = next((f for f in formats if f in HEADERS), "msgpack")
    body = pool.bodies[native][0] if native in pool.bodies else encode(pool.requests[0], native)
    routes: list[tuple[str, bytes, dict[str, str]]] = [(native, body, {})]
    if front.v2 and v2.REST in formats:
        routes.append((v2.REST, pool.bodies[v2.REST][0], pool.headers[v2.REST][0]))
    for fmt, data, own in routes:
        target, headers = f"{front.url}{_path(fmt, name)}", {**_headers(fmt), **own, **front.auth}
        took = load.first_answer(target, data, headers, args.timeout * 4)
        log(f"{front.name} answered its first {fmt} request in {took:.1f} s")
    if front.grpc is not None and v2.GRPC in formats:
        took = rpc.first_answer(front.grpc, pool.bodies[v2.GRPC][0], front.auth, args.timeout)
        log(f"{front.name} answered its first {v2.GRPC} call ({front.grpc}) in {took:.1f} s")


def _token(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _reachable(url: str, auth: dict[str, str]) -> None:
    try:
        status = httpx.get(f"{url}/ping", headers=auth, timeout=10).status_code
    except httpx.HTTPError as e:
        raise ValueError(f"--url {url}: cannot reach /ping: {e!r}") from None
    if status != 200:
        log(f"warning: {url}/ping answered {status}")


def _level(
    args: argparse.Namespace,
    pool: Pool,
    bits: Mapping[str, np.ndarray],
    front: Front,
    name: str,
    fmt: str,
    n: int,
) -> tuple[dict[str, Any], check.Sampler]:
    """One level: warm-up, then `args.duration` measured seconds with `n` clients. For a front
    the bench started, its processes' CPU per request by kind and, at the end, their resident
    memory too."""
    label = f"{front.name} {fmt} x{n}"
    t0 = time.perf_counter()
    start = t0 + args.warmup
    end = start + args.duration
    sampler = check.Sampler(pool, fmt, bits, start, args.check_every)
    last = [t0, 0.0]

    def progress(results: list[wire.Result]) -> None:
        now, done = time.perf_counter(), len(results)
        phase = "warm-up" if now < start else f"{min(now, end) - start:.0f}/{args.duration:g} s"
        rate = (done - last[1]) / max(now - last[0], 1e-9)
        last[:] = [now, done]
        log(f"  {label}: {phase}, {rate:.0f} req/s")

    log(f"{label} ...")
    on_ok = None if front.name == "ceiling" else sampler.on_ok  # its one answer fits no check
    tick = max(1.0, (args.warmup + args.duration) / 5)
    clients: Coroutine[Any, Any, list[wire.Result]]
    if fmt == v2.GRPC:
        assert front.grpc is not None
        clients = rpc.run_clients(
            front.grpc,
            pool.bodies[fmt],
            front.auth,
            n,
            end,
            on_ok=on_ok,
            timeout=args.timeout,
            tick=tick,
            on_tick=progress,
            channels=args.grpc_channels,
        )
    else:
        clients = wire.run_clients(
            f"{front.url}{_path(fmt, name)}",
            pool.bodies[fmt],
            {**_headers(fmt), **front.auth},
            n,
            end,
            on_ok=on_ok,
            timeout=args.timeout,
            tick=tick,
            on_tick=progress,
            body_headers=pool.headers.get(fmt),
        )
    server_pid = front.proc.pid if front.proc is not None else None
    # Asked before the load, not during it; the ceiling and TorchServe list nothing.
    listed = load.processes(front.url, name, front.auth) if server_pid else {}
    server0 = cpu.snapshot(server_pid, listed)
    cpu0 = time.process_time()
    results = wire.run(clients)
    client_cpu = time.process_time() - cpu0  # warm-up and its checks included: every request
    server1 = cpu.snapshot(server_pid, listed)
    server_cpu = cpu.per_request(server0, server1, len(results))
    sampler.finish()
    row = {
        "front": front.name,
        "format": fmt,
        "concurrency": n,
        **report.level_metrics(results, pool.ids, start, args.duration),
        "checked": sampler.checked,
        "wrong": sampler.wrong,
        "client_cpu_ms_per_req": 1000 * client_cpu / max(1, len(results)),
        "server_cpu_ms_per_req": server_cpu,
        "server_processes": cpu.counts(server1),
        "server_rss": cpu.resident(server1),  # at the end of the level
    }
    p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f} ms"
    log(
        f"  {label}: {row['req_s']:.1f} req/s, p99 {p99}, errors {row['errors'] or 0}, "
        f"{sampler.checked} checked, {sampler.wrong} wrong"
    )
    return row, sampler
