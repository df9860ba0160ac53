"""The distributed engine as one rank that torchrun started: TorchServe's `parallelType: tp`.

TorchServe starts `nproc-per-node` workers with torchrun and sends every batch to every one of
them; only rank 0's reply reaches the clients. So rank 0 looks up the whole batch and the
other ranks join each collective with an empty one: no lookup is done twice. The group is
torchrun's (the env:// rendezvous), not one this server spawns and supervises.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from serving.config import EngineKind, ModelSpec, WeightsSpec
from serving.engine import collate as collate_lib
from serving.engine import describe, weights
from serving.engine.base import Answer, Commit, Delta, Ids
from serving.engine.distributed import dmp
from serving.engine.distributed.lookup import idle_batch, lookup, warm_up
from serving.engine.split import split
from serving.errors import SpecError


class TorchrunEngine:
    kind: EngineKind = "distributed"
    inline_ids = 0  # TorchServe calls forward on its own worker thread

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cpu")
        self.model: torch.nn.Module | None = None
        self.last_timings: dict[str, float] = {}

    @property
    def leader(self) -> bool:
        """Rank 0: the one whose answers go back to the clients."""
        return self.rank == 0

    @property
    def ready(self) -> bool:
        return self.model is not None

    def start(self) -> None:
        """Join torchrun's group, take this rank's shards, load them and warm up."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != self.spec.sharding.world_size:
            raise SpecError(
                f"torchrun started {world} ranks but '{self.spec.name}' is planned for "
                f"{self.spec.sharding.world_size}: set torchrun nproc-per-node to match"
            )
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            # torchrun set MASTER_ADDR/PORT, RANK and WORLD_SIZE: the env:// rendezvous.
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        weights.check(self.spec)
        model = dmp.shard(self.spec, self.device)
        weights.load(self.spec, model, self.rank)
        warm_up(self.spec, model, self.device)
        self.model = model

    def forward(self, requests: Sequence[Ids]) -> list[Answer]:
        """Rank 0: every request's rows. The other ranks join the collective with an empty
        batch and answer nothing (an empty list)."""
        assert self.model is not None, "start() first"
        keys = self.spec.features
        if not self.leader:
            lookup(self.model, self.device, keys, *idle_batch(keys))
            return []
        batch = collate_lib.collate(requests, keys)
        values = lookup(self.model, self.device, batch.keys, batch.lengths, batch.values)
        outputs = {k: v.cpu().numpy() for k, v in zip(batch.keys, values, strict=True)}
        return split(batch, outputs, requests)

    def describe(self) -> dict[str, Any]:
        devices = {r: str(self.device) for r in range(self.spec.sharding.world_size)}
        served = {
            "engine": self.kind,
            "device": self.device.type,
            "rank_devices": devices,
            "ranks": [{"rank": self.rank, "device": str(self.device), "pid": os.getpid()}],
        }
        return describe.model(self.spec, served)

    def prepare_update(self, delta: Delta) -> Commit:
        raise SpecError("weight updates are not served through TorchServe")

    def prepare_reload(self, weights_spec: WeightsSpec) -> Commit:
        raise SpecError("weight reloads are not served through TorchServe")

    def close(self) -> None:
        self.model = None
