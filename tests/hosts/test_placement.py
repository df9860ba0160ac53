"""Across hosts each host numbers its own GPUs: rank r of a group of `world` ranks over
`nnodes` hosts runs on its host's cuda:(r % (world / nnodes)), which /models/{m} shows."""

from __future__ import annotations

from serving.config import parse_spec
from serving.engine.distributed.driver import DistributedEngine
from tests.hosts.test_hosts import SHARDING
from tests.http.server import MODEL


def test_each_hosts_ranks_use_that_hosts_gpus_from_zero() -> None:
    four = {**SHARDING, "world_size": 4, "tables": {"items": {"column_wise": [0, 2, 1, 3]}}}
    spec = parse_spec({**MODEL, "sharding": four})
    engine = DistributedEngine(spec, device="cuda", nnodes=2, cluster_key=b"k")  # not started
    tables = {t["name"]: t for t in engine.describe()["tables"]}
    shards = [(s["rank"], s["device"]) for s in tables["items"]["shards"]]
    assert shards == [(0, "cuda:0"), (2, "cuda:0"), (1, "cuda:1"), (3, "cuda:1")]
    one_host = DistributedEngine(spec, device="cuda")
    tables = {t["name"]: t for t in one_host.describe()["tables"]}
    assert [s["device"] for s in tables["items"]["shards"]] == [
        "cuda:0",
        "cuda:2",
        "cuda:1",
        "cuda:3",
    ]
