"""TorchServe handler: a thin adapter over `serving` for TorchServe's torchrun (tp) workers.

TorchServe starts `nproc-per-node` processes with torchrun and sends every batch to every one
of them; only rank 0's reply goes back to the clients. So rank 0 looks up the whole batch and
the other ranks join each collective with an empty one: no lookup is done twice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson
import torch
import torch.distributed as dist

from serving import codec
from serving.collate import collate
from serving.config import ModelSpec, load_spec
from serving.engine import model as model_lib
from serving.engine import weights
from serving.engine.lookup import idle_batch, lookup, warm_up
from serving.engine.quiet import quiet_torch_logs
from serving.errors import InvalidInput, SeqServeError, http_status
from serving.split import split

log = logging.getLogger(__name__)


class SeqServeHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.rank = 0
        self.spec: ModelSpec | None = None
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")
        self.limits = codec.Limits()

    def initialize(self, context: Any) -> None:
        quiet_torch_logs()
        options = (context.model_yaml_config or {}).get("handler", {}) or {}
        model_dir = Path(context.system_properties["model_dir"])
        # The spec may live outside the archive, for tables too big to zip.
        spec = load_spec(model_dir / options.get("spec", "model.yaml"))
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
        self.model = model_lib.shard(spec, self.device)
        weights.load(spec, self.model, self.rank)
        warm_up(spec, self.model, self.device)
        self.limits = codec.Limits(
            max_body_bytes=int(options.get("max_body_bytes", codec.Limits.max_body_bytes)),
            max_ids_per_request=int(
                options.get("max_ids_per_request", codec.Limits.max_ids_per_request)
            ),
            max_instances=int(options.get("max_instances", codec.Limits.max_instances)),
        )
        self.spec = spec
        self.initialized = True
        log.info("seqserve rank %d of %d ready for '%s'", self.rank, world, spec.name)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        assert self.spec is not None and self.model is not None
        spec = self.spec
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
        rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
        batch = collate(flat, spec.features, rows)
        if self.rank == 0:
            values = lookup(self.model, self.device, batch.keys, batch.lengths, batch.values)
            outputs = {k: v.cpu().numpy() for k, v in zip(batch.keys, values, strict=True)}
            answers = iter(split(batch, outputs, flat))
        else:
            lookup(self.model, self.device, batch.keys, *idle_batch(batch.keys))
            return replies  # TorchServe returns rank 0's replies only
        for i, d in enumerate(decoded):
            if d is None:
                continue
            mine = [next(answers) for _ in d.requests]
            body, media = codec.encode(mine, d.instances, _header(context, i, "accept"))
            context.set_response_content_type(i, media)
            replies[i] = body
        return replies

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
