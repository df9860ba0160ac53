"""TorchServe handler: a thin adapter over `serving`, for either engine.

`local` (the default): one worker holds the local engine, which drives every rank's kernels;
no torchrun, no process group.

`distributed`: TorchServe starts `nproc-per-node` processes with torchrun (`parallelType: tp`)
and sends every batch to every one of them; only rank 0's reply goes back to the clients. So
rank 0 looks up the whole batch and the other ranks join each collective with an empty one: no
lookup is done twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import torch
import torch.distributed as dist

from serving import settings
from serving.config import ModelSpec, load_spec
from serving.engine import weights
from serving.engine.base import Answer
from serving.engine.collate import Request, collate
from serving.engine.devices import default_device
from serving.engine.distributed import dmp
from serving.engine.distributed.lookup import idle_batch, lookup, warm_up
from serving.engine.local.engine import LocalEngine
from serving.engine.quiet import quiet_torch_logs
from serving.engine.split import split
from serving.errors import InvalidInput, SeqServeError, http_status
from serving.fronts import codec

log = logging.getLogger(__name__)


class SeqServeHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.rank = 0
        self.spec: ModelSpec | None = None
        self.engine: LocalEngine | None = None  # the local engine
        self.model: torch.nn.Module | None = None  # the distributed engine: this rank's shards
        self.device = torch.device("cpu")
        self.limits = settings.limits({})

    def initialize(self, context: Any) -> None:
        quiet_torch_logs()
        options = (context.model_yaml_config or {}).get("handler", {}) or {}
        model_dir = Path(context.system_properties["model_dir"])
        # The spec may live outside the archive, for tables too big to zip.
        spec = load_spec(model_dir / options.get("spec", "model.yaml"))
        if spec.sharding.engine == "local":
            self.engine = LocalEngine(spec, device=default_device())
            self.engine.start()
        else:
            self._join_group(spec)
        self.limits = settings.limits(options)
        self.spec = spec
        self.initialized = True
        log.info("seqserve ready for '%s' (%s engine)", spec.name, spec.sharding.engine)

    def _join_group(self, spec: ModelSpec) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != spec.sharding.world_size:
            raise ValueError(
                f"torchrun started {world} ranks but '{spec.name}' is planned for "
                f"{spec.sharding.world_size}: set torchrun nproc-per-node to match"
            )
        self.rank = int(os.environ.get("RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            # torchrun set MASTER_ADDR/PORT, RANK and WORLD_SIZE: the env:// rendezvous.
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        weights.check(spec)
        self.model = dmp.shard(spec, self.device)
        weights.load(spec, self.model, self.rank)
        warm_up(spec, self.model, self.device)
        log.info("seqserve rank %d of %d joined", self.rank, world)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        assert self.spec is not None
        log.info("seqserve batch size %d", len(data))
        decoded: list[codec.Decoded | None] = []
        replies: list[bytes] = []
        for i, row in enumerate(data):
            # Every rank decodes the same batch the same way, so all agree on what to look up.
            try:
                decoded.append(self._decode(row, _header(context, i, "content-type")))
                replies.append(b"")
            except SeqServeError as e:
                decoded.append(None)
                replies.append(_error(context, i, e))
        flat = [r for d in decoded if d is not None for r in d.requests]
        if not flat:
            return replies
        if self.engine is not None:
            answers = iter(self.engine.forward(flat))
        elif self.rank == 0:
            answers = iter(self._rank_zero(flat))
        else:
            assert self.model is not None
            lookup(self.model, self.device, self.spec.features, *idle_batch(self.spec.features))
            return replies  # TorchServe returns rank 0's replies only
        for i, d in enumerate(decoded):
            if d is None:
                continue
            mine = [next(answers) for _ in d.requests]
            body, media = codec.encode(mine, d.instances, _header(context, i, "accept"))
            context.set_response_content_type(i, media)
            replies[i] = body
        return replies

    def _rank_zero(self, flat: Sequence[Request]) -> list[Answer]:
        """The whole batch through rank 0's sharded forward (its peers join with nothing)."""
        assert self.spec is not None and self.model is not None
        batch = collate(flat, self.spec.features)
        values = lookup(self.model, self.device, batch.keys, batch.lengths, batch.values)
        outputs = {k: v.cpu().numpy() for k, v in zip(batch.keys, values, strict=True)}
        return split(batch, outputs, flat)

    def _decode(self, row: dict[str, Any], content_type: str | None) -> codec.Decoded:
        assert self.spec is not None
        body = row.get("body", row.get("data"))
        if body is None:
            raise InvalidInput("the request has no body")
        if not isinstance(body, bytes | bytearray):
            # TorchServe parses JSON bodies itself unless TS_DECODE_INPUT_REQUEST=false (which
            # `seqserve torchserve` sets); give the codec bytes again so both fronts validate
            # the same way.
            body = orjson.dumps(body)
        return codec.decode(bytes(body), content_type, self.spec, self.limits)


def _header(context: Any, idx: int, name: str) -> str | None:
    for key, value in (context.get_all_request_header(idx) or {}).items():
        key = key.decode() if isinstance(key, bytes) else key
        if key.lower() == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _error(context: Any, idx: int, error: SeqServeError) -> bytes:
    status = http_status(error)
    context.set_response_status(status, type(error).__name__, idx)
    context.set_response_content_type(idx, codec.JSON)
    return codec.encode_error(status, type(error).__name__, str(error))


_service = SeqServeHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """TorchServe's entry point; it is called once with no data to initialise."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
