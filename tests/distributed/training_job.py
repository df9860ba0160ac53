"""A stand-in TorchRec training job: saves a DCP checkpoint of its sharded model.

Its sparse arch holds one or several collections under module prefixes, as a real job's does:
`EmbeddingCollection`s and, beside them, `EmbeddingBagCollection`s that serving ignores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
)
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise, table_wise
from torchrec.distributed.types import ShardingEnv, ShardingPlan

Tables = dict[str, torch.Tensor]
# module name -> (kind, its tables); "ec": EmbeddingCollection, "ebc": EmbeddingBagCollection
Modules = dict[str, tuple[Literal["ec", "ebc"], Tables]]


class SparseArch(nn.Module):
    """The job's collections, each under its own name (its state-dict prefix)."""

    def __init__(self, modules: Modules):
        super().__init__()
        meta = torch.device("meta")
        for name, (kind, tables) in modules.items():
            config = EmbeddingConfig if kind == "ec" else EmbeddingBagConfig
            configs = [
                config(
                    name=n,
                    num_embeddings=t.shape[0],
                    embedding_dim=t.shape[1],
                    feature_names=[f"{name}_{n}"],
                )
                for n, t in tables.items()
            ]
            if kind == "ec":
                self.add_module(name, EmbeddingCollection(tables=configs, device=meta))
            else:
                self.add_module(name, EmbeddingBagCollection(tables=configs, device=meta))


def _job(rank: int, world: int, port: int, path: str, modules: Modules, rows_only: bool) -> None:
    store = dist.TCPStore("127.0.0.1", port, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    arch = SparseArch(modules)
    plans = {}
    for name, (_, tables) in modules.items():
        names = list(tables)
        # Row-wise over every rank; unless `rows_only`, only the first table, the rest
        # table-wise on the last rank.
        plan = {n: row_wise(compute_kernel="fused") for n in names}
        if not rows_only:
            plan.update({n: table_wise(rank=world - 1, compute_kernel="fused") for n in names[1:]})
        plans[name] = construct_module_sharding_plan(
            getattr(arch, name), plan, local_size=world, world_size=world, device_type="cpu"
        )
    model = DistributedModelParallel(
        arch,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=torch.device("cpu"),
        plan=ShardingPlan(plans),
        sharders=[EmbeddingCollectionSharder(), EmbeddingBagCollectionSharder()],
    )
    state = model.state_dict()
    with torch.no_grad():
        for name, (kind, tables) in modules.items():
            inner = "embeddings" if kind == "ec" else "embedding_bags"
            for n, whole in tables.items():
                for s in state[f"{name}.{inner}.{n}.weight"].local_shards():
                    (r0, c0), (nr, nc) = s.metadata.shard_offsets, s.metadata.shard_sizes
                    s.tensor.copy_(whole[r0 : r0 + nr, c0 : c0 + nc])
    dcp.save(state, checkpoint_id=path)
    dist.destroy_process_group()
    # Done: leave without running C++ static destructors. About 1 exit in 8 aborted there
    # ("terminate called without an active exception", SIGABRT) after the checkpoint was
    # complete, failing the test that only needed the checkpoint.
    os._exit(0)


def save_checkpoint(path: Path, tables: Tables, world: int = 2) -> None:
    """One EmbeddingCollection under `ec`: its first table row-wise, the rest table-wise."""
    _spawn(path, {"ec": ("ec", tables)}, world, rows_only=False)


def save_job_checkpoint(path: Path, modules: Modules, world: int = 2) -> None:
    """Several collections, every table row-wise over every rank."""
    _spawn(path, modules, world, rows_only=True)


def _spawn(path: Path, modules: Modules, world: int, rows_only: bool) -> None:
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.spawn(_job, args=(world, store.port, str(path), modules, rows_only), nprocs=world)
