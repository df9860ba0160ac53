"""TorchServe handler: a thin adapter over an `Engine` and the native codec.

`local` (the default): one worker holds the local engine, which drives every rank's kernels;
no torchrun, no process group. `distributed`: each torchrun worker is one rank of
`serving.engine.distributed.torchrun`; only rank 0 (its `leader`) answers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson

from serving import settings
from serving.config import load_spec
from serving.engine.base import Engine
from serving.engine.devices import default_device
from serving.engine.distributed.torchrun import TorchrunEngine
from serving.engine.local.engine import LocalEngine
from serving.engine.quiet import quiet_torch_logs
from serving.errors import InvalidInput, PayloadTooLarge, SeqServeError, http_status
from serving.fronts import codec

log = logging.getLogger(__name__)


class SeqServeHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.engine: Engine | None = None
        self.limits = settings.limits({})
        self.rows: dict[str, int] = {}

    def initialize(self, context: Any) -> None:
        quiet_torch_logs()
        options = (context.model_yaml_config or {}).get("handler", {}) or {}
        model_dir = Path(context.system_properties["model_dir"])
        # The spec may live outside the archive, for tables too big to zip.
        spec = load_spec(model_dir / options.get("spec", "model.yaml"))
        engine: Engine
        if spec.sharding.engine == "local":
            engine = LocalEngine(spec, device=default_device())
        else:
            engine = TorchrunEngine(spec)
        engine.start()
        self.engine = engine
        self.limits = settings.limits(options)
        self.rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
        self.initialized = True
        log.info("seqserve ready for '%s' (%s engine)", spec.name, spec.sharding.engine)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        assert self.engine is not None
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
        flat = [r for d in decoded if d is not None for r in d.sequences]
        if not flat:
            return replies
        answers = iter(self.engine.forward(flat))
        if not getattr(self.engine, "leader", True):
            return replies  # TorchServe returns rank 0's replies only
        for i, d in enumerate(decoded):
            if d is None:
                continue
            mine = [next(answers) for _ in d.sequences]
            body, media = codec.encode(mine, d.instances, _header(context, i, "accept"))
            context.set_response_content_type(i, media)
            replies[i] = body
        return replies

    def _decode(self, row: dict[str, Any], content_type: str | None) -> codec.Decoded:
        body = row.get("body", row.get("data"))
        if body is None:
            raise InvalidInput("the request has no body")
        if not isinstance(body, bytes | bytearray):
            # TorchServe parses JSON bodies itself unless TS_DECODE_INPUT_REQUEST=false (which
            # `seqserve torchserve` sets); give the codec bytes again so both fronts validate
            # the same way.
            body = orjson.dumps(body)
        limit = self.limits.max_body_bytes
        if len(body) > limit:  # TorchServe read the body: its limit is checked here, once
            raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is {limit} bytes")
        return codec.decode(bytes(body), content_type, self.rows, self.limits)


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
