"""Sharded engine (2 CPU ranks) beside the unsharded in-process EmbeddingCollection.

Same weights, same requests; both paths include collate and split, so the ratio is what
sharding costs end to end. Measurements are interleaved (unsharded, split, one, unsharded,
...) so drift on a shared machine hits every column alike; each cell is a median.

    .venv/bin/python benchmarks/engine_bench.py [--sizes 256,1024,4096,8192] [--reps 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from serving.bench.reference import unsharded_rows
from serving.demo import demo_spec
from serving.engine import model, weights
from serving.engine.sharded import ShardedEngine
from serving.split import split


def make_requests(spec, count: int, mean_len: int, rng) -> list[dict[str, np.ndarray]]:
    rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
    return [
        {f: rng.integers(0, rows[f], size=max(1, rng.poisson(mean_len))) for f in spec.features}
        for _ in range(count)
    ]


def unsharded_forward(ec, spec, rows, reqs):
    batch, outputs = unsharded_rows(ec, spec.features, rows, reqs)
    return split(batch, {k: v.numpy() for k, v in outputs.items()}, reqs)


def timed(fn, reqs) -> float:
    t = time.perf_counter()
    fn(reqs)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024,4096,8192")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--mean-len", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/engine_bench.json")
    args = ap.parse_args()

    spec = demo_spec()  # 3 features over 2 tables, dim 64, CW [0,1,0,1] / [1,0,1,0] on 2 ranks
    rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
    ec = model.unsharded(spec, weights.full_tables(spec))
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = {m: ShardedEngine(spec, dispatch=m) for m in ("split", "one")}
    for e in engines.values():
        e.start()
    paths = {"unsharded": lambda r: unsharded_forward(ec, spec, rows, r)}
    paths.update({m: e.forward for m, e in engines.items()})
    results = []
    try:
        for size in sizes:
            reqs = make_requests(spec, size, args.mean_len, rng)
            ids = sum(len(v) for r in reqs for v in r.values())
            times: dict[str, list[float]] = {p: [] for p in paths}
            for fn in paths.values():
                fn(reqs)  # warm: buffers grow to this size once
            for _ in range(args.reps):
                for p, fn in paths.items():
                    times[p].append(timed(fn, reqs))
            row = {"sequences": size, "ids": ids}
            for m, e in engines.items():
                e.forward(reqs)
                row[f"{m}_stages_ms"] = {k: v * 1e3 for k, v in e.last_timings.items()}
            for p, ts in times.items():
                row[f"{p}_ms"] = statistics.median(ts) * 1e3
                row[f"{p}_ids_per_s"] = ids / statistics.median(ts)
            results.append(row)
            print(f"measured {size} sequences ({ids} ids)", flush=True)
    finally:
        for e in engines.values():
            e.close()

    print()
    print(
        "| requests/batch | ids/batch | unsharded ids/s | sharded split ids/s | ratio | "
        "sharded one-rank ids/s | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        u, sp, one = (r[f"{p}_ids_per_s"] for p in ("unsharded", "split", "one"))
        print(
            f"| {r['sequences']} | {r['ids']} | {u / 1e6:.2f} M | {sp / 1e6:.2f} M "
            f"| {sp / u:.2f}x | {one / 1e6:.2f} M | {one / u:.2f}x |"
        )
    print("\nWhere the sharded time goes (ms, one batch; lookup = input dist + fused lookup +")
    print("output dist + stitch, the slowest rank; ranks = driver waiting on all ranks):")
    for r in results:
        for m in engines:
            stages = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in r[f"{m}_stages_ms"].items())
            print(f"  {r['sequences']:>5} {m:>5}: total {r[f'{m}_ms']:.1f} | {stages}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "reps": args.reps}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
