"""`seqserve bench`: the reference lines, then every front x format x concurrency level.

Levels run format by format, concurrency by concurrency, the fronts back to back at each level
so drift on a shared machine hits them alike; the HTTP ceiling (serving.bench.ceiling), when
on, runs last at each level as one more "front". A sample of answers is checked bit for bit
against the model's weights; any wrong answer makes the exit status 1.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving.bench import ceiling, check, cpu, load, report, wire
from serving.bench.mix import IdDist, LengthDist, Mix, Pool
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


def _spec(model: Path | None) -> ModelSpec:
    from serving.config import load_spec
    from serving.demo import demo_spec

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
    formats = _csv(args.formats, "--formats", list(load.HEADERS))
    fronts = _csv(args.compare, "--compare", load.FRONTS) if args.compare else ["url"]
    spec = _spec(args.model)
    name = args.model_name or spec.name
    mix = Mix.for_spec(
        spec, LengthDist.parse(args.length_dist), IdDist.parse(args.ids), args.subset, args.seed
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("benchmarks/results") / f"bench-{stamp}"

    log(f"model '{name}' ({args.model or 'built-in demo'}); mix {mix.lengths}, ids {mix.ids}")
    pool = Pool.build(mix, args.pool, formats)
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
    answers, about = ceiling.typical_answers(pool, bits, formats) if with_ceiling else ({}, None)
    if about:
        log(f"the HTTP ceiling answers request {about['request']}: {about['answer_bytes']} bytes")

    rows, examples = _measure(args, out, fronts, formats, levels, name, pool, bits, answers)
    wrong = sum(r["wrong"] for r in rows)
    doc = {
        "command": shlex.join(["seqserve", *sys.argv[1:]]),
        "started": stamp,
        "target": {
            "url": args.url,
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
            "ceiling": with_ceiling,
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
) -> tuple[list[dict[str, Any]], list[str]]:
    """Start the fronts (or reach --url) and the ceiling with `answers` (none: no ceiling),
    then every level; the rows and wrong answers. Whatever happens, the servers it started
    are stopped."""
    rows: list[dict[str, Any]] = []
    examples: list[str] = []
    servers: dict[str, tuple[subprocess.Popen[bytes] | None, str, dict[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as tmp:
        try:
            out.mkdir(parents=True, exist_ok=True)  # the servers' logs go there
            if args.url:
                servers["url"] = (None, args.url.rstrip("/"), _token(args.token))
                _reachable(servers["url"][1], servers["url"][2])
            else:
                for front in fronts:
                    log(f"starting {front} (its output: {out / front}.log) ...")
                    with open(out / f"{front}.log", "wb") as server_log:
                        servers[front] = load.start_server(
                            front, Path(tmp) / front, args.model, server_log
                        )
            if answers:
                log(f"starting the HTTP ceiling (its output: {out}/ceiling.log) ...")
                with open(out / "ceiling.log", "wb") as server_log:
                    top, top_url = ceiling.start(answers, Path(tmp) / "ceiling", server_log)
                    servers["ceiling"] = (top, top_url, {})
            fmt0 = formats[0]
            for front, (_, url, auth) in servers.items():
                target, headers = f"{url}/predictions/{name}", {**load.HEADERS[fmt0], **auth}
                took = load.first_answer(target, pool.bodies[fmt0][0], headers, args.timeout * 4)
                log(f"{front} answered its first request in {took:.1f} s")
            for fmt in formats:
                for n in levels:
                    # Fronts back to back at each level: drift on a shared box hits all alike.
                    for front, (proc, url, auth) in servers.items():
                        target = f"{url}/predictions/{name}"
                        pid = proc.pid if proc is not None else None
                        row, sampler = _level(args, pool, bits, target, auth, front, fmt, n, pid)
                        rows.append(row)
                        examples += sampler.examples
        except load.NotReady as e:
            started = not args.url or answers
            where = f" (server output: {out}/<front>.log)" if started else ""
            raise ValueError(f"{e}{where}") from None
        finally:
            for proc, _, _ in servers.values():
                if proc is not None:
                    load.stop_server(proc)
    return rows, examples


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
    target: str,
    auth: dict[str, str],
    front: str,
    fmt: str,
    n: int,
    server_pid: int | None,
) -> tuple[dict[str, Any], check.Sampler]:
    """One level: warm-up, then `args.duration` measured seconds with `n` clients. With the
    server's pid (a front the bench started), its processes' CPU per request too."""
    label = f"{front} {fmt} x{n}"
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
    server0 = cpu.snapshot(server_pid)
    cpu0 = time.process_time()
    clients = wire.run_clients(
        target,
        pool.bodies[fmt],
        {**load.HEADERS[fmt], **auth},
        n,
        end,
        on_ok=None if front == "ceiling" else sampler.on_ok,  # its one answer fits no check
        timeout=args.timeout,
        tick=max(1.0, (args.warmup + args.duration) / 5),
        on_tick=progress,
    )
    results = wire.run(clients)
    client_cpu = time.process_time() - cpu0  # warm-up and its checks included: every request
    server_cpu = cpu.per_request(server0, cpu.snapshot(server_pid), len(results))
    sampler.finish()
    row = {
        "front": front,
        "format": fmt,
        "concurrency": n,
        **report.level_metrics(results, pool.ids, start, args.duration),
        "checked": sampler.checked,
        "wrong": sampler.wrong,
        "client_cpu_ms_per_req": 1000 * client_cpu / max(1, len(results)),
        "server_cpu_ms_per_req": server_cpu,
    }
    p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f} ms"
    log(
        f"  {label}: {row['req_s']:.1f} req/s, p99 {p99}, errors {row['errors'] or 0}, "
        f"{sampler.checked} checked, {sampler.wrong} wrong"
    )
    return row, sampler
