"""Locust load on a seqserve front with `seqserve bench`'s request mix (serving.bench.mix).

Locust is pinned in constraints.txt and installed by `make` (the dev extra); a test runs this
file headless against a real server (tests/bench/test_locust.py). Each user sends
pre-encoded single-sequence bodies back to back (no wait: a closed loop like `seqserve bench`,
so users = concurrency), half JSON and half msgpack, reported as two request names. Locust
checks statuses only; `seqserve bench` also checks the answers bit for bit.

    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 32 -r 8 -t 60s \
        --host http://127.0.0.1:8080

Environment (all optional):
    SEQSERVE_BENCH_TOKEN        bearer token (TorchServe: the inference key in key_file.json)
    SEQSERVE_BENCH_MODEL        model.yaml of the served model (default: the built-in demo)
    SEQSERVE_BENCH_MODEL_NAME   name in the URL (default: the spec's name)
    SEQSERVE_BENCH_LENGTH_DIST  default lognormal:mean=20,sigma=1
    SEQSERVE_BENCH_IDS          uniform (default) or zipf:S
    SEQSERVE_BENCH_SUBSET       fraction of requests naming a subset of the features (0.25)
    SEQSERVE_BENCH_SEED         seeds the pool (0)
    SEQSERVE_BENCH_POOL         distinct requests (512)
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, constant, task

from serving.bench.mix import HEADERS, IdDist, LengthDist, Mix, Pool
from serving.config import load_spec


def _spec():
    path = os.environ.get("SEQSERVE_BENCH_MODEL")
    if path:
        return load_spec(path)
    from serving.commands.demo import demo_spec

    return demo_spec()


SPEC = _spec()
MODEL_NAME = os.environ.get("SEQSERVE_BENCH_MODEL_NAME") or SPEC.name
MIX = Mix.for_spec(
    SPEC,
    LengthDist.parse(os.environ.get("SEQSERVE_BENCH_LENGTH_DIST", "lognormal:mean=20,sigma=1")),
    IdDist.parse(os.environ.get("SEQSERVE_BENCH_IDS", "uniform")),
    float(os.environ.get("SEQSERVE_BENCH_SUBSET", "0.25")),
    int(os.environ.get("SEQSERVE_BENCH_SEED", "0")),
)
POOL = Pool.build(MIX, int(os.environ.get("SEQSERVE_BENCH_POOL", "512")), list(HEADERS))
TOKEN = os.environ.get("SEQSERVE_BENCH_TOKEN")
AUTH = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}


class SeqServeUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.i = random.randrange(len(POOL.requests))  # a different walk through the pool each

    def post(self, fmt: str) -> None:
        self.i = (self.i + 1) % len(POOL.requests)
        self.client.post(
            f"/predictions/{MODEL_NAME}",
            data=POOL.bodies[fmt][self.i],
            headers={**HEADERS[fmt], **AUTH},
            name=f"/predictions/{MODEL_NAME} [{fmt}]",
        )

    @task
    def json_request(self) -> None:
        self.post("json")

    @task
    def msgpack_request(self) -> None:
        self.post("msgpack")
