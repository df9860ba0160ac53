"""Engines side by side: unsharded EmbeddingCollection, local engine (packed per device, the
default, and per rank: the stitched layout), distributed engine and one core's index_select,
on the demo model (3 features over 2 tables, dim 64, column-wise [0,1,0,1] / [1,0,1,0] over 2
ranks) and the same requests.

Every path but index_select includes collate and split, so a ratio is what sharding costs end
to end. Measurements are interleaved (each round runs a short block of every path, in turn)
so drift on a shared machine hits every column alike; each cell is a median.

    .venv/bin/python benchmarks/engine_bench.py [--sizes 1,32,256,4096,8192] [--reps 7]

With --realistic: the local engine on `seqserve demo-model --realistic`'s tables (dims 16-256,
int8 and fp16 beside fp32), stored as the spec says and with every table fp32, fp16 or int8,
side by side on the same requests; with each variant's bytes per rank as stored.

    .venv/bin/python benchmarks/engine_bench.py --realistic [--sizes 32,4096]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.bench.reference import unsharded_rows
from serving.commands.demo import REALISTIC, demo_spec
from serving.config import ModelSpec, parse_spec
from serving.engine import model, stored, weights
from serving.engine.distributed.driver import DistributedEngine
from serving.engine.local.engine import LocalEngine
from serving.engine.split import split

PATHS = ("unsharded", "local", "local_per_rank", "distributed", "index_select_1core")


def make_requests(spec, count: int, mean_len: int, rng) -> list[dict[str, np.ndarray]]:
    rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
    return [
        {f: rng.integers(0, rows[f], size=max(1, rng.poisson(mean_len))) for f in spec.features}
        for _ in range(count)
    ]


def gather_1core(table: torch.Tensor, reqs) -> Callable[[], object]:
    """One core's raw row gather of the same number of rows from a table of the same width."""
    ids = torch.from_numpy(np.concatenate([v for r in reqs for v in r.values()]) % len(table))

    def run() -> object:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return torch.index_select(table, 0, ids)
        finally:
            torch.set_num_threads(threads)

    return run


def steady_allocator() -> None:
    """Keep freed memory in glibc's heap for reuse instead of returning it to the kernel.

    Large blocks are otherwise mmap-ed fresh per batch, and whether the unsharded path's 63 MB
    output (4096 requests) lands on reused or fresh pages flipped its time between ~19 and
    ~49 ms from one run to the next: page faults, not lookups. This pins every path to reused
    memory, the unsharded one's best case.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 31)


def recording(engine: LocalEngine, reqs, stages: list[dict[str, float]]) -> Callable[[], object]:
    """The engine's forward, keeping each call's stage times."""

    def run() -> object:
        answers = engine.forward(reqs)
        stages.append(dict(engine.last_timings))
        return answers

    return run


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,32,256,4096,8192")
    ap.add_argument("--reps", type=int, default=7, help="rounds over every path")
    ap.add_argument("--block", type=int, default=3, help="timed calls per path and round")
    ap.add_argument("--mean-len", type=int, default=20)
    ap.add_argument("--no-distributed", action="store_true", help="skip the DMP rank group")
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda: the unsharded model and both engines on GPUs (the local engine "
        "puts rank r on cuda:(r %% gpus); the distributed one needs a GPU per rank)",
    )
    ap.add_argument(
        "--realistic", action="store_true", help="stored dtypes side by side on the realistic model"
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    steady_allocator()
    if args.realistic:
        dtypes(args)
        return

    spec = demo_spec()
    tables = weights.full_tables(spec)
    device = torch.device(args.device)
    ec = model.unsharded(spec, tables).to(device)
    rng = np.random.default_rng(0)
    local = LocalEngine(spec, device=args.device)
    local.start()
    per_rank = LocalEngine(with_pack(spec, "rank"), device=args.device)
    per_rank.start()
    dist = None if args.no_distributed else DistributedEngine(spec, device=args.device)
    if dist is not None:
        dist.start()
    results: list[dict[str, Any]] = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            reqs = make_requests(spec, size, args.mean_len, rng)
            ids = sum(len(v) for r in reqs for v in r.values())
            stages: list[dict[str, float]] = []  # the local engine's stage times, per call
            paths: dict[str, Callable[[], object]] = {
                "unsharded": lambda reqs=reqs: split(
                    *_as_numpy(unsharded_rows(ec, spec.features, reqs, device)), reqs
                ),
                "local": recording(local, reqs, stages),
                "local_per_rank": lambda reqs=reqs: per_rank.forward(reqs),
                "index_select_1core": gather_1core(tables["items"], reqs),
            }
            if dist is not None:
                paths["distributed"] = lambda reqs=reqs: dist.forward(reqs)
            medians = interleaved(paths, args)
            row: dict[str, Any] = {"sequences": size, "ids": ids}
            row["local_stages_ms"] = {
                k: statistics.median(t[k] for t in stages[1:]) * 1e3 for k in stages[-1]
            }
            row["collate_split_us_per_sequence"] = (
                statistics.median(t["collate_s"] + t["split_s"] for t in stages[1:]) * 1e6 / size
            )
            for p, t in medians.items():
                row[f"{p}_ms"] = t * 1e3
                row[f"{p}_ids_per_s"] = ids / t
            results.append(row)
            print(f"measured {size} sequences ({ids} ids)", flush=True)
    finally:
        local.close()
        per_rank.close()
        if dist is not None:
            dist.close()
    report(results)
    write(args.out or "benchmarks/results/engine_bench.json", results, args)


def write(path: str, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"results": results, "reps": args.reps, "block": args.block}, indent=2)
    )
    print(f"\nwrote {out}")


def interleaved(
    paths: dict[str, Callable[[], object]], args: argparse.Namespace
) -> dict[str, float]:
    """Median seconds per call of each path, measured in turn, round after round."""
    times: dict[str, list[float]] = {p: [] for p in paths}
    for fn in paths.values():
        fn()  # warm: buffers grow to this size once
    for _ in range(args.reps):
        for p, fn in paths.items():
            # A block of calls per path, its first call not counted: it would pay for the
            # previous path's idle threads (torch's OpenMP pool spins a while after a
            # parallel region) and caches, which a server running one path never does.
            fn()
            times[p].extend(timed(fn) for _ in range(args.block))
    return {p: statistics.median(ts) for p, ts in times.items()}


def with_pack(spec: ModelSpec, pack: str) -> ModelSpec:
    return spec.model_copy(update={"sharding": spec.sharding.model_copy(update={"pack": pack})})


def stored_as(dtype: str) -> ModelSpec:
    """The realistic model as given ("mixed"), or with every table in one dtype."""
    raw = json.loads(json.dumps(REALISTIC))
    if dtype != "mixed":
        for t in raw["tables"]:
            t["dtype"] = dtype
    return parse_spec(raw, source=f"realistic ({dtype})")


def dtypes(args: argparse.Namespace) -> None:
    """ids/s of the local engine per stored dtype, beside fp32, on the same requests."""
    variants = ("fp32", "fp16", "int8", "mixed")
    engines = {d: LocalEngine(stored_as(d), device=args.device) for d in variants}
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    for e in engines.values():
        e.start()
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            reqs = make_requests(engines["fp32"].spec, size, args.mean_len, rng)
            ids = sum(len(v) for r in reqs for v in r.values())
            paths = {d: (lambda e=e, reqs=reqs: e.forward(reqs)) for d, e in engines.items()}
            medians = interleaved(paths, args)
            row: dict[str, Any] = {"sequences": size, "ids": ids}
            for d, t in medians.items():
                row[f"{d}_ms"] = t * 1e3
                row[f"{d}_ids_per_s"] = ids / t
            results.append(row)
            print(f"measured {size} sequences ({ids} ids)", flush=True)
    finally:
        for e in engines.values():
            e.close()
    memory = {
        d: {r: sum(t.values()) for r, t in stored.bytes_per_rank(e.spec).items()}
        for d, e in engines.items()
    }
    print("\n| requests/batch | ids/batch | " + " | ".join(f"{d} ids/s" for d in variants) + " |")
    print("|---:|---:|" + "---:|" * len(variants))
    for r in results:
        cells = [f"{r['fp32_ids_per_s'] / 1e6:.2f} M"] + [
            f"{r[f'{d}_ids_per_s'] / 1e6:.2f} M ({r[f'{d}_ids_per_s'] / r['fp32_ids_per_s']:.2f}x)"
            for d in variants[1:]
        ]
        print(f"| {r['sequences']} | {r['ids']} | " + " | ".join(cells) + " |")
    print("\n| stored as | " + " | ".join(f"rank {r} MB" for r in memory["fp32"]) + " |")
    print("|---|" + "---:|" * len(memory["fp32"]))
    for d, ranks in memory.items():
        print(f"| {d} | " + " | ".join(f"{b / 1e6:.1f}" for b in ranks.values()) + " |")
    for r in results:
        r["bytes_per_rank"] = memory
    write(args.out or "benchmarks/results/dtypes/engine_bench.json", results, args)


def _as_numpy(pair):
    batch, outputs = pair
    return batch, {k: v.cpu().numpy() for k, v in outputs.items()}


def report(results: list[dict[str, Any]]) -> None:
    def rate(r: dict[str, Any], p: str) -> str:
        v = r.get(f"{p}_ids_per_s")
        return "—" if v is None else f"{v / 1e6:.2f} M"

    def ratio(r: dict[str, Any], p: str, to: str = "unsharded") -> str:
        v = r.get(f"{p}_ids_per_s")
        return "—" if v is None else f"{v / r[f'{to}_ids_per_s']:.2f}x"

    print()
    print(
        "| requests/batch | ids/batch | unsharded ids/s | local ids/s | local/unsharded "
        "| local/index_select | per-rank local/unsharded | per-rank local/index_select "
        "| distributed/unsharded | index_select 1 core | collate+split us/request |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['sequences']} | {r['ids']} | {rate(r, 'unsharded')} | {rate(r, 'local')} "
            f"| **{ratio(r, 'local')}** | **{ratio(r, 'local', 'index_select_1core')}** "
            f"| {ratio(r, 'local_per_rank')} "
            f"| {ratio(r, 'local_per_rank', 'index_select_1core')} "
            f"| {ratio(r, 'distributed')} | {rate(r, 'index_select_1core')} "
            f"| {r['collate_split_us_per_sequence']:.2f} |"
        )
    print("\nLocal engine stages (ms per batch, medians):")
    for r in results:
        stages = ", ".join(f"{k[:-2]} {v:.3f}" for k, v in r["local_stages_ms"].items())
        print(f"  {r['sequences']:>5}: total {r['local_ms']:.3f} | {stages}")


if __name__ == "__main__":
    main()
