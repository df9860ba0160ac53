"""`seqserve bench` flags (argparse only: building the parser imports nothing heavy)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_flags(p: argparse.ArgumentParser) -> None:
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    target.add_argument(
        "--compare",
        metavar="FRONTS",
        help="start each front on free ports on the same model and measure them back to back: "
        "fastapi,torchserve (or one of them); fastapi:N is seqserve serve --workers N (N front "
        "processes over one engine process), e.g. fastapi,fastapi:2,fastapi:4",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="model.yaml: served with --compare; with --url, the spec whose weights the answers "
        "are checked against (default: the built-in demo)",
    )
    p.add_argument(
        "--model-name", help="model name in the URL (default: the spec's name, demo by default)"
    )
    p.add_argument(
        "--token",
        default=os.environ.get("SEQSERVE_AUTH_TOKEN") or None,
        help="bearer token for --url (env SEQSERVE_AUTH_TOKEN, the server's own variable)",
    )
    p.add_argument("--concurrency", default="1,8,32", help="concurrent clients per level (1,8,32)")
    p.add_argument("--duration", type=float, default=10, help="measured seconds per level (10)")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each (2)")
    p.add_argument(
        "--formats",
        default="json,msgpack",
        help="comma-separated, measured in this order: json and msgpack (POST "
        "/predictions/{model}), v2-binary (Open Inference Protocol REST, binary tensors both "
        "ways) and v2-grpc (its gRPC ModelInfer, raw contents); the v2 ones on fronts that speak "
        "it: fastapi, fastapi:N or --url (json,msgpack)",
    )
    p.add_argument(
        "--grpc-url",
        metavar="HOST:PORT",
        help="with --url: the server's gRPC address for v2-grpc (default: the url's host, "
        "port 8081); --compare gives its fastapi front a free gRPC port",
    )
    p.add_argument(
        "--grpc-channels",
        choices=("client", "shared"),
        default="client",
        help="v2-grpc: a channel (one HTTP/2 connection) per client, as each HTTP client holds "
        "one connection, or one channel shared by all clients (client)",
    )
    p.add_argument(
        "--length-dist",
        default="lognormal:mean=20,sigma=1",
        help="ids per feature: lognormal:mean=M,sigma=S or poisson:mean=M, each with an "
        "optional max=N (default 256); clipped to [0, max] (lognormal:mean=20,sigma=1)",
    )
    p.add_argument("--ids", default="uniform", help="ids in a table: uniform or zipf:S (uniform)")
    p.add_argument(
        "--subset",
        type=float,
        default=0.25,
        help="fraction of requests naming a random subset of the features, not all (0.25)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the request pool (0)")
    p.add_argument("--pool", type=int, default=512, help="distinct pre-encoded requests (512)")
    p.add_argument(
        "--check-every",
        type=int,
        default=50,
        help="check every Nth answer of each client bit for bit, all in the warm-up (50)",
    )
    p.add_argument(
        "--reference-duration",
        type=float,
        default=2,
        help="seconds for each in-process reference line; 0 skips them (2)",
    )
    p.add_argument(
        "--reference-batch", type=int, default=32, help="requests per reference batch (32)"
    )
    p.add_argument(
        "--reference-threads",
        type=int,
        default=1,
        help="torch threads for the unsharded reference; 0: torch's default, all cores (1)",
    )
    p.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        help="the HTTP ceiling: a bare uvicorn app (uvloop, httptools) answering a stored answer "
        "of the mix's mean size, measured after the fronts at each level, and each front's "
        "req/s over it (default: on with --compare, off with --url)",
    )
    p.add_argument("--timeout", type=float, default=60, help="per-request timeout, seconds (60)")
    p.add_argument(
        "--out",
        type=Path,
        help="folder for results.json and plot.png (benchmarks/results/bench-<timestamp>)",
    )
