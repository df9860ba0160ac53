"""/models/{model}'s document: the spec as served, each rank and where each shard lives."""

from __future__ import annotations

from typing import Any

from serving.config import ModelSpec
from serving.engine import stored


def model(spec: ModelSpec, served: dict[str, Any]) -> dict[str, Any]:
    """The spec as served, the engine (`served`: what `describe` of an engine knows of its
    ranks, with `rank_devices`), and for every table where each shard lives and its bytes.

    Bytes are counted where the weights are held: per entry of `served["devices"]` (the local
    engine's packs, each with its `ranks`, whose shards of a table are one packed table), else
    per rank (each distributed rank holds its own)."""
    plan = spec.plan()
    served = dict(served)
    devices = served.pop("rank_devices")
    holders = served.get("devices") or served["ranks"]
    held = stored.bytes_held(spec, [h.get("ranks", [h.get("rank")]) for h in holders])
    for holder, tables in zip(holders, held, strict=True):
        holder["bytes"] = sum(tables.values())
        holder["tables"] = tables
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
                "bytes": sum(tables.get(t.name, 0) for tables in held),
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
