"""Triton's model configuration, model repository (index) and statistics extensions
(docs/protocols.md#triton-extensions): the documents REST answers as JSON, and gRPC as the same
messages (`as_message`, protobuf's JSON mapping), so both say the same thing.

perf_analyzer starts by reading the model configuration; the shape given here is the one it
runs with: no batch dimension (`max_batch_size: 0`), each feature an INT64 input of dims [-1]
and an FP32 output of dims [-1, dim], each `<feature>.lengths` an optional INT64 input.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from serving.config import ModelSpec
from serving.core.host import Host
from serving.core.stats import Stats
from serving.fronts.v2 import LENGTHS, PLATFORM

BACKEND = "seqserve"
READY, UNAVAILABLE = "READY", "UNAVAILABLE"
LOAD_UNLOAD = (
    "loading and unloading models is not supported: this server serves the one model "
    "'{model}', loaded at start (POST /v2/repository/index lists it); new weights go to "
    "POST /models/{model}/weights (docs/updates.md)"
)

M = TypeVar("M", bound=Message)


def model_config(spec: ModelSpec) -> dict[str, Any]:
    """Triton's ModelConfig of the model served (its JSON form, as Triton's REST answers)."""
    dims = {f: t.embedding_dim for f, t in spec.table_of().items()}

    def tensor_in(name: str, optional: bool) -> dict[str, Any]:
        return {
            "name": name,
            "data_type": "TYPE_INT64",  # INT32 is accepted too (docs/protocols.md#tensors)
            "format": "FORMAT_NONE",
            "dims": [-1],
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": optional,
        }

    inputs = [tensor_in(f, False) for f in spec.features]
    inputs += [tensor_in(f + LENGTHS, True) for f in spec.features]
    outputs = [
        {
            "name": f,
            "data_type": "TYPE_FP32",
            "dims": [-1, dims[f]],
            "label_filename": "",
            "is_shape_tensor": False,
        }
        for f in spec.features
    ]
    return {
        "name": spec.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        # One version is served at a time, the latest (weight updates move it).
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 0,
        "input": inputs,
        "output": outputs,
    }


def repository_index(spec: ModelSpec, version: int, ready: bool, only_ready: bool) -> list[Any]:
    """Triton's repository index: the one model, its version and state."""
    if only_ready and not ready:
        return []
    entry = {"name": spec.name, "version": str(version), "state": READY if ready else UNAVAILABLE}
    if not ready:
        entry["reason"] = "ranks are starting or restarting"
    return [entry]


async def statistics(service: Host) -> dict[str, Any]:
    """Triton's statistics response: the one model's counters, the host's totals."""
    stats = Stats.of((await service.totals()).snapshot["stats"])
    return {"model_stats": [stats.doc(service.spec.name, str(service.version))]}


def as_message(doc: dict[str, Any], message: M) -> M:
    """A document above as its protobuf message (the same JSON mapping both ways)."""
    return json_format.ParseDict(doc, message)
