"""A stand-in TorchRec training job: saves a DCP checkpoint under a row-wise/table-wise plan."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise, table_wise
from torchrec.distributed.types import ShardingEnv, ShardingPlan


class Tower(nn.Module):
    """A model whose sparse part sits under a prefix, as in a real training job."""

    def __init__(self, configs: list[EmbeddingConfig]):
        super().__init__()
        self.ec = EmbeddingCollection(tables=configs, device=torch.device("meta"))


def _job(rank: int, world: int, port: int, path: str, tables: dict[str, torch.Tensor]) -> None:
    store = dist.TCPStore("127.0.0.1", port, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    names = list(tables)
    configs = [
        EmbeddingConfig(
            name=n, num_embeddings=t.shape[0], embedding_dim=t.shape[1], feature_names=[f"f_{n}"]
        )
        for n, t in tables.items()
    ]
    tower = Tower(configs)
    # First table row-wise over every rank, the rest table-wise on the last rank.
    plan = {names[0]: row_wise(compute_kernel="fused")}
    plan.update({n: table_wise(rank=world - 1, compute_kernel="fused") for n in names[1:]})
    module_plan = construct_module_sharding_plan(
        tower.ec, plan, local_size=world, world_size=world, device_type="cpu"
    )
    model = DistributedModelParallel(
        tower,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=torch.device("cpu"),
        plan=ShardingPlan({"ec": module_plan}),
        sharders=[EmbeddingCollectionSharder()],
    )
    state = model.state_dict()
    with torch.no_grad():
        for n in names:
            for s in state[f"ec.embeddings.{n}.weight"].local_shards():
                (r0, c0), (nr, nc) = s.metadata.shard_offsets, s.metadata.shard_sizes
                s.tensor.copy_(tables[n][r0 : r0 + nr, c0 : c0 + nc])
    dcp.save(state, checkpoint_id=path)
    dist.destroy_process_group()
    # Done: leave without running C++ static destructors. About 1 exit in 8 aborted there
    # ("terminate called without an active exception", SIGABRT) after the checkpoint was
    # complete, failing the test that only needed the checkpoint.
    os._exit(0)


def save_checkpoint(path: Path, tables: dict[str, torch.Tensor], world: int = 2) -> None:
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.spawn(_job, args=(world, store.port, str(path), tables), nprocs=world)
