"""/models/{model}'s document: the spec as served, each rank and where each shard lives."""

from __future__ import annotations

from typing import Any

from serving.config import ModelSpec
from serving.engine import stored


def model(spec: ModelSpec, served: dict[str, Any]) -> dict[str, Any]:
    """The spec as served, the engine (`served`: what `describe` of an engine knows of its
    ranks, with `rank_devices`), and for every table where each shard lives and its bytes."""
    plan = spec.plan()
    served = dict(served)
    devices = served.pop("rank_devices")
    held = stored.bytes_per_rank(spec)
    for rank in served["ranks"]:
        rank["bytes"] = sum(held[rank["rank"]].values())
        rank["tables"] = held[rank["rank"]]
    return {
        "name": spec.name,
        "world_size": spec.sharding.world_size,
        **served,
        "features": spec.features,
        "tables": [
            {
                "name": t.name,
                "num_embeddings": t.num_embeddings,
                "embedding_dim": t.embedding_dim,
                "dtype": t.dtype,
                "bytes": sum(tables.get(t.name, 0) for tables in held.values()),
                "features": t.features,
                "sharding": plan[t.name].kind,
                "shards": [
                    {"rank": s.rank, "columns": [s.start, s.end], "device": devices[s.rank]}
                    for s in plan[t.name].shards
                ],
            }
            for t in spec.tables
        ],
    }
