"""The distributed engine's model: the spec's EmbeddingCollection sharded by TorchRec's
DistributedModelParallel under the spec's column-wise / table-wise plan."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torchrec import EmbeddingCollection
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    table_wise,
)
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from serving.config import ModelSpec
from serving.engine.model import LocalShard, embedding_configs, internal_name, state_key

# `dense` aborts with heap corruption on this stack; `fused` is FBGEMM's table-batched kernel.
KERNEL = "fused"


def shard(spec: ModelSpec, device: torch.device) -> DistributedModelParallel:
    """Build on meta and let DMP materialise only this rank's shards (collective call)."""
    ec = EmbeddingCollection(tables=embedding_configs(spec), device=torch.device("meta"))
    generators = {}
    for i, (name, plan) in enumerate(spec.plan().items()):
        assert name == spec.tables[i].name
        if plan.kind == "table_wise":
            generators[internal_name(i)] = table_wise(
                rank=plan.shards[0].rank, compute_kernel=KERNEL
            )
        else:
            ranks = [s.rank for s in plan.shards]
            generators[internal_name(i)] = column_wise(ranks=ranks, compute_kernel=KERNEL)
    world = spec.sharding.world_size
    module_plan = construct_module_sharding_plan(
        ec, generators, local_size=world, world_size=world, device_type=device.type
    )
    return DistributedModelParallel(
        ec,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=device,
        plan=ShardingPlan({"": module_plan}),
        sharders=[EmbeddingCollectionSharder()],
    )


def local_shards(spec: ModelSpec, model: torch.nn.Module) -> Iterator[LocalShard]:
    state = model.state_dict()
    for i, t in enumerate(spec.tables):
        for s in state[state_key(i)].local_shards():
            (r0, c0), (nr, nc) = s.metadata.shard_offsets, s.metadata.shard_sizes
            yield LocalShard(t.name, (r0, r0 + nr), (c0, c0 + nc), s.tensor)
