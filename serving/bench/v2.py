"""The Open Inference Protocol v2 as the bench speaks it (docs/protocols.md): request bodies,
built once per pool request, and the answers read back into per-feature float32 rows.

    v2-binary  POST /v2/models/{model}/infer: a JSON header of Inference-Header-Content-Length
               bytes, then each feature's ids as raw little-endian INT64; every output asked
               for as binary (`binary_data_output`), so the answer is a JSON header, then each
               output's rows as raw little-endian FP32, in output order
    v2-grpc    inference.GRPCInferenceService/ModelInfer: the ids in raw_input_contents, the
               rows read from raw_output_contents

A native request {"features": {"item_id": [3, 17], "category_id": [5]}} is the v2 request
with the inputs item_id=[3, 17] and category_id=[5]. numpy, orjson and protobuf only; the
generated messages are imported when a gRPC body is built or read.
"""

from __future__ import annotations

import numpy as np
import orjson

from serving.engine.base import Ids
from serving.settings import BY_NAME

REST = "v2-binary"
GRPC = "v2-grpc"
FORMATS = (REST, GRPC)
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY = "application/octet-stream"
REST_HEADERS = {"Content-Type": BINARY}
GRPC_PORT: int = BY_NAME["grpc_port"].default  # seqserve serve's default --grpc-port

Outputs = dict[str, np.ndarray]  # feature -> float32 [n, dim]


class BadAnswer(ValueError):
    """A 200 (or OK) whose body is not a well-formed v2 answer."""


def rest_body(request: Ids) -> tuple[bytes, int]:
    """The v2 REST body of one request, and the length of its JSON header (the value of its
    Inference-Header-Content-Length)."""
    inputs = [
        {
            "name": f,
            "datatype": "INT64",
            "shape": [len(ids)],
            "parameters": {"binary_data_size": 8 * len(ids)},
        }
        for f, ids in request.items()
    ]
    head = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    raw = b"".join(np.ascontiguousarray(ids, dtype="<i8").tobytes() for ids in request.values())
    return head + raw, len(head)


def grpc_body(request: Ids, model: str) -> bytes:
    """The serialized ModelInferRequest of one request."""
    from serving.fronts.proto import grpc_service_pb2 as pb

    message = pb.ModelInferRequest(model_name=model)
    for f, ids in request.items():
        message.inputs.add(name=f, datatype="INT64", shape=[len(ids)])
        message.raw_input_contents.append(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    return message.SerializeToString()


def header_length(head: bytes) -> int:
    """The Inference-Header-Content-Length of a binary answer, from its HTTP head (status line
    and headers as sent); BadAnswer if the head lacks it or is not application/octet-stream."""
    fields: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    length = fields.get(HEADER_LENGTH.lower().encode())
    if length is None:
        raise BadAnswer(f"no {HEADER_LENGTH} header: the outputs asked for as binary are not")
    if not length.isdigit():
        raise BadAnswer(f"{HEADER_LENGTH}: {length[:32]!r} is not a byte count")
    media = fields.get(b"content-type", b"").split(b";")[0].strip().lower()
    if media != BINARY.encode():
        raise BadAnswer(f"content type {media[:64]!r} for a binary answer, not {BINARY}")
    return int(length)


def read_rest(body: bytes, head_length: int) -> Outputs:
    """The outputs of a v2 REST answer whose outputs are all binary: a JSON header of
    `head_length` bytes, then each output's `binary_data_size` bytes, in output order."""
    if not 0 < head_length <= len(body):
        raise BadAnswer(f"{HEADER_LENGTH} {head_length} for a body of {len(body)} bytes")
    doc = orjson.loads(body[:head_length])
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list):
        raise BadAnswer(f"no 'outputs' in the answer's header: {body[:80]!r}")
    out: Outputs = {}
    at = head_length
    for i, entry in enumerate(outputs):
        name, n, dim = _output(entry, f"outputs[{i}]", out)
        params = entry.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if type(size) is not int:
            raise BadAnswer(f"outputs[{i}] '{name}': not binary (no binary_data_size)")
        if size != 4 * n * dim or at + size > len(body):
            raise BadAnswer(
                f"outputs[{i}] '{name}': binary_data_size {size} for shape [{n}, {dim}] with "
                f"{len(body) - at} bytes left"
            )
        out[name] = np.frombuffer(body, dtype="<f4", count=n * dim, offset=at).reshape(n, dim)
        at += size
    if at != len(body):
        raise BadAnswer(f"{len(body) - at} bytes after the last output's data")
    return out


def read_grpc(content: bytes) -> Outputs:
    """The outputs of a serialized ModelInferResponse, from raw_output_contents."""
    from serving.fronts.proto import grpc_service_pb2 as pb

    reply = pb.ModelInferResponse.FromString(content)
    raw = reply.raw_output_contents
    if len(raw) != len(reply.outputs):
        raise BadAnswer(f"{len(raw)} raw_output_contents for {len(reply.outputs)} outputs")
    out: Outputs = {}
    for i, (t, data) in enumerate(zip(reply.outputs, raw, strict=True)):
        entry = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        name, n, dim = _output(entry, f"outputs[{i}]", out)
        if len(data) != 4 * n * dim:
            raise BadAnswer(f"outputs[{i}] '{name}': {len(data)} bytes for shape [{n}, {dim}]")
        out[name] = np.frombuffer(data, dtype="<f4").reshape(n, dim)
    return out


def _output(entry: object, where: str, seen: Outputs) -> tuple[str, int, int]:
    """(name, rows, dim) of one output's metadata: FP32 [n, dim], named once."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise BadAnswer(f"{where}: not an output with a name")
    name, shape = entry["name"], entry.get("shape")
    if entry.get("datatype") != "FP32":
        raise BadAnswer(f"{where} '{name}': datatype {entry.get('datatype')!r}, not FP32")
    if not isinstance(shape, list) or len(shape) != 2 or not all(type(x) is int for x in shape):
        raise BadAnswer(f"{where} '{name}': shape {shape!r}, not [n, dim]")
    if min(shape) < 0:
        raise BadAnswer(f"{where} '{name}': shape {shape!r}")
    if name in seen:
        raise BadAnswer(f"{where}: output '{name}' is given twice")
    return name, shape[0], shape[1]
