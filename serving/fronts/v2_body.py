"""The v2 REST infer body (docs/protocols.md) <-> tensors: a JSON header, optionally followed by
the inputs' raw bytes (`Inference-Header-Content-Length`), inputs and outputs possibly in
system shared memory; the answer's JSON header and binary outputs.

Pure functions over bytes: every way a body can be wrong is a `SeqServeError` naming the field.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import numpy as np
import orjson

from serving.errors import InvalidInput, UnsupportedMediaType
from serving.fronts import codec, v2
from serving.fronts.asgi import Headers, Reply
from serving.fronts.shm import SharedMemory, Slice

HEADER_LENGTH = b"inference-header-content-length"
BINARY = "application/octet-stream"
JSON = b"application/json"
JSON_HEADERS: Headers = [(b"content-type", JSON)]
_JSON = msgspec.json.Decoder()


# -- the infer body -------------------------------------------------------------------------

# (name, where, binary_data or None: default, the shared memory it goes to or None)
Requested = list[tuple[str, str, bool | None, Slice | None]]


class Decoded(NamedTuple):
    id: str | None  # the request's "id", echoed in the answer
    inputs: list[v2.Tensor]
    requested: Requested
    binary_default: bool  # parameters.binary_data_output


class _SharedMemoryParams(msgspec.Struct, gc=False):
    # Any of these sends the header to the checks below, which read shared memory.
    shared_memory_region: Any = msgspec.UNSET
    shared_memory_byte_size: Any = msgspec.UNSET
    shared_memory_offset: Any = msgspec.UNSET

    def in_shared_memory(self) -> bool:
        unset = msgspec.UNSET
        return not (
            self.shared_memory_region is unset
            and self.shared_memory_byte_size is unset
            and self.shared_memory_offset is unset
        )


class _InputParams(_SharedMemoryParams):
    binary_data_size: int | msgspec.UnsetType = msgspec.UNSET


class _Input(msgspec.Struct, gc=False):
    name: str
    datatype: str
    shape: list[int]
    data: Any = msgspec.UNSET
    parameters: _InputParams = msgspec.field(default_factory=_InputParams)


class _OutputParams(_SharedMemoryParams):
    binary_data: bool | msgspec.UnsetType = msgspec.UNSET


class _Output(msgspec.Struct, gc=False):
    name: str
    parameters: _OutputParams = msgspec.field(default_factory=_OutputParams)


class _Params(msgspec.Struct, gc=False):
    binary_data_output: bool | msgspec.UnsetType = msgspec.UNSET


class _Request(msgspec.Struct, gc=False):
    inputs: list[_Input]
    outputs: list[_Output] | msgspec.UnsetType = msgspec.UNSET
    id: Any = None
    parameters: _Params = msgspec.field(default_factory=_Params)


# A well-formed header of tensors in the body is parsed and its types checked in C in one
# pass; any other (shared memory, or something wrong) is walked by `_checked_request`, whose
# job is shared memory and the message naming the field.
_REQUEST = msgspec.json.Decoder(_Request)


def decode(body: bytes, headers: dict[bytes, bytes], shm: SharedMemory) -> Decoded:
    """The request id, inputs, requested outputs and binary_data_output of one infer body."""
    head, rest = _split(body, headers)
    try:
        request = _REQUEST.decode(head)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _checked_request(head, rest, shm)
    inputs, used = [], 0
    for i, item in enumerate(request.inputs):
        params = item.parameters
        size = params.binary_data_size
        if params.in_shared_memory():
            return _checked_request(head, rest, shm)
        if size is msgspec.UNSET:
            if item.data is msgspec.UNSET:
                return _checked_request(head, rest, shm)
            data = item.data
        else:
            if size < 0 or used + size > len(rest):
                return _checked_request(head, rest, shm)
            data, used = rest[used : used + size], used + size
        inputs.append(v2.Tensor(item.name, item.datatype, item.shape, data, f"inputs[{i}]"))
    if used != len(rest):
        return _checked_request(head, rest, shm)
    requested: Requested = []
    for i, o in enumerate(request.outputs or ()):
        if o.parameters.in_shared_memory():
            return _checked_request(head, rest, shm)
        flag = o.parameters.binary_data
        requested.append((o.name, f"outputs[{i}]", None if flag is msgspec.UNSET else flag, None))
    request_id = request.id if isinstance(request.id, str) else None
    return Decoded(request_id, inputs, requested, request.parameters.binary_data_output is True)


def _split(body: bytes, headers: dict[bytes, bytes]) -> tuple[bytes, bytes]:
    """The body's JSON header and the binary data after it."""
    media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if media not in (b"", b"application/json", BINARY.encode()):
        raise UnsupportedMediaType(
            f"content type '{media.decode('latin-1')[:64]}' is not supported; use "
            f"application/json, or {BINARY} with Inference-Header-Content-Length"
        )
    raw_length = headers.get(HEADER_LENGTH)
    if raw_length is None:
        head, rest = body, b""
    else:
        if not raw_length.isdigit() or int(raw_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length: {raw_length.decode('latin-1')[:32]!r} is not "
                f"a length within the body's {len(body)} bytes",
                "Inference-Header-Content-Length",
            )
        head, rest = body[: int(raw_length)], body[int(raw_length) :]
    return head, rest


def _checked_request(head: bytes, rest: bytes, shm: SharedMemory) -> Decoded:
    """The header the typed decoder passed on, walked in Python: shared memory, and what is
    wrong with it."""
    request = json_object(head)
    inputs, used = [], 0
    for i, item in enumerate(_list(request, "inputs")):
        where = f"inputs[{i}]"
        params = _params(item, where)
        size = _binary_size(item, where)
        region = shm.slice(params, where) if params else None
        if region is not None:
            if size is not None or "data" in item:
                raise InvalidInput(
                    f"{where}: data in shared memory and in the body; give one", where
                )
            data: Any = region
        elif size is None:
            if "data" not in item:
                raise InvalidInput(f"{where}: needs 'data' or a binary_data_size", where)
            data = item["data"]
        else:
            if used + size > len(rest):
                raise InvalidInput(
                    f"{where}: binary_data_size {size} runs past the body's binary data "
                    f"({len(rest) - used} bytes left)",
                    where,
                )
            data, used = rest[used : used + size], used + size
        name, datatype = _str(item, "name", where), _str(item, "datatype", where)
        inputs.append(v2.Tensor(name, datatype, _shape(item, where), data, where))
    if used != len(rest):
        raise InvalidInput(
            f"body: {len(rest) - used} bytes of binary data that no input's binary_data_size "
            "accounts for",
            "body",
        )
    requested: Requested = []
    for i, item in enumerate(_list(request, "outputs", required=False)):
        where = f"outputs[{i}]"
        params = _params(item, where)
        flag = as_bool(params.get("binary_data"), f"{where}.binary_data")
        target = shm.slice(params, where) if params else None
        requested.append((_str(item, "name", where), where, flag, target))
    top = _params(request, "body")
    default = as_bool(top.get("binary_data_output"), "parameters.binary_data_output") or False
    request_id = request.get("id")
    return Decoded(request_id if isinstance(request_id, str) else None, inputs, requested, default)


def encode(
    request_id: str | None,
    model: str,
    version: int,
    outputs: dict[str, np.ndarray],
    binary: dict[str, bool],
    targets: dict[str, Slice],
    shm: SharedMemory,
) -> Reply:
    entries: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for name, a in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(a.shape)}
        target = targets.get(name)
        if target is not None:
            entry["parameters"] = shm_output(shm, target, a)
        elif binary[name]:
            # The rows' own bytes: joined into the body, the one copy they make.
            blob = np.ascontiguousarray(a, dtype="<f4").reshape(-1).view(np.uint8).data
            entry["parameters"] = {"binary_data_size": blob.nbytes}
            blobs.append(blob)
        else:
            entry["data"] = codec.json_floats(a).reshape(-1)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return 200, head, list(JSON_HEADERS)
    headers = [(b"content-type", BINARY.encode()), (HEADER_LENGTH, str(len(head)).encode())]
    return 200, b"".join([head, *blobs]), headers


def shm_output(shm: SharedMemory, target: Slice, rows: np.ndarray) -> dict[str, Any]:
    """Write an output's rows into its shared memory region; the parameters that say so."""
    params: dict[str, Any] = {"shared_memory_region": target.region.name}
    params["shared_memory_byte_size"] = shm.write_rows(target, rows)
    if target.offset:
        params["shared_memory_offset"] = target.offset
    return params


def json_object(raw: bytes) -> dict[str, Any]:
    # msgspec, not orjson: an integer past 64 bits stays an integer ("is not an INT64"), where
    # orjson reads it as a float (1e+23).
    try:
        doc = _JSON.decode(raw)
    except msgspec.DecodeError as e:
        raise InvalidInput(f"body: not valid JSON: {e}", "body") from None
    if not isinstance(doc, dict):
        raise InvalidInput("body: expected a JSON object", "body")
    return doc


def _list(doc: dict[str, Any], key: str, required: bool = True) -> list[dict[str, Any]]:
    value = doc.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise InvalidInput(f"{key}: expected an array of objects", key)
    return value


def _str(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidInput(f"{where}.{key}: expected a string", f"{where}.{key}")
    return value


def _shape(item: dict[str, Any], where: str) -> list[int]:
    shape = item.get("shape")
    if not isinstance(shape, list) or set(map(type, shape)) - {int}:
        raise InvalidInput(f"{where}.shape: expected an array of integers", f"{where}.shape")
    return shape


def _params(item: dict[str, Any], where: str) -> dict[str, Any]:
    params = item.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}.parameters: expected an object", f"{where}.parameters")
    return params


def _binary_size(item: dict[str, Any], where: str) -> int | None:
    size = _params(item, where).get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        field = f"{where}.parameters.binary_data_size"
        raise InvalidInput(f"{field}: expected a byte count", field)
    return size


def as_bool(value: Any, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{field}: expected true or false", field)
