"""The Open Inference Protocol v2 over REST (docs/protocols.md), as plain ASGI on /v2.

Every /v2 path is answered here, errors included, so they all carry the protocol's body
`{"error": "..."}` with the statuses of the native contract. JSON tensors and the binary tensor
data extension work both ways: a body may be a JSON header of `Inference-Header-Content-Length`
bytes followed by the inputs' raw data, and any output may be sent the same way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import numpy as np
import orjson
from starlette.types import Receive, Scope, Send

from serving.core.service import Service
from serving.errors import InvalidInput, SeqServeError, UnsupportedMediaType, http_status
from serving.fronts import codec, v2
from serving.fronts.asgi import (
    Headers,
    Reply,
    error_headers,
    gone_of,
    headers_of,
    read_body,
    respond,
)

HEADER_LENGTH = b"inference-header-content-length"
BINARY = "application/octet-stream"
JSON = b"application/json"
JSON_HEADERS: Headers = [(b"content-type", JSON)]


def error_reply(status: int, message: str, retry_after: float = 1.0) -> Reply:
    """The protocol's error body: {"error": message}."""
    return status, orjson.dumps({"error": message}), error_headers(status, JSON, retry_after)


def internal_error(message: str) -> Reply:
    return error_reply(500, message)


def ok(doc: Any, status: int = 200) -> Reply:
    return status, orjson.dumps(doc), list(JSON_HEADERS)


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


class V2Rest:
    """Answers every path under /v2; `serving.fronts.app.Front` routes here."""

    def __init__(self, service: Service, server_version: str):
        self.service = service
        self.server_version = server_version
        self.retry_after = service.settings.batch.retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        parts = path.rstrip("/").split("/")[2:]
        route, method, model, version = _route(parts)

        async def answer() -> Reply | None:
            if route is None:
                return error_reply(404, f"no such route: {path}")
            if scope["method"] != method:
                status, body, headers = error_reply(
                    405, f"method {scope['method']} is not allowed on {path}; use {method}"
                )
                return status, body, [*headers, (b"allow", method.encode())]
            try:
                return await self.answer(route, scope, receive, model, version)
            except SeqServeError as e:
                return error_reply(http_status(e), str(e), self.retry_after)

        await respond(send, self.service.metrics, route or "/v2/other", answer, internal_error)

    async def answer(
        self, route: str, scope: Scope, receive: Receive, model: str, version: str
    ) -> Reply | None:
        service = self.service
        headers = headers_of(scope)
        if route == "/v2/health/live":
            return ok({"live": True})
        if route == "/v2/health/ready":
            return ok({"ready": service.ready}, 200 if service.ready else 503)
        if route == "/v2/models/{model}/ready":
            service.check_model(model, version)
            return ok({"name": model, "ready": service.ready}, 200 if service.ready else 503)
        if route == "/v2":
            service.authorize(headers.get(b"authorization"))
            return ok(v2.server_metadata(self.server_version))
        if route == "/v2/models/{model}":
            service.authorize(headers.get(b"authorization"))
            service.check_model(model, version)
            return ok(v2.model_metadata(service.spec, service.version))
        service.admit(headers.get(b"authorization"), model, version)
        limits = service.limits
        body = await read_body(receive, headers.get(b"content-length"), limits.max_body_bytes)
        if body is None:
            return None
        decoded = _decode(body, headers)
        inference = v2.inference(decoded.inputs, service.rows, limits)
        names = v2.selected([(n, w) for n, w, _ in decoded.requested], inference.features)
        binary = {n: b for n, _, b in decoded.requested if b is not None}
        predicted = await service.predict(inference.sequences, gone_of(scope))
        if predicted is None:
            return None
        outputs = {n: v2.rows(predicted.answers, n) for n in names}
        chosen = {n: binary.get(n, decoded.binary_default) for n in names}
        return _encode(decoded.id, service.spec.name, predicted.version, outputs, chosen)


def _route(parts: list[str]) -> tuple[str | None, str, str, str]:
    """(route template, its method, model, version) of a path under /v2; None if unknown."""
    if not parts:
        return "/v2", "GET", "", ""
    if parts in (["health", "live"], ["health", "ready"]):
        return "/v2/" + "/".join(parts), "GET", "", ""
    if len(parts) < 2 or parts[0] != "models":
        return None, "GET", "", ""
    model, rest, version = parts[1], parts[2:], ""
    if rest[:1] == ["versions"] and len(rest) >= 2:
        version, rest = rest[1], rest[2:]
    if rest == []:
        return "/v2/models/{model}", "GET", model, version
    if rest == ["ready"]:
        return "/v2/models/{model}/ready", "GET", model, version
    if rest == ["infer"]:
        return "/v2/models/{model}/infer", "POST", model, version
    return None, "GET", "", ""


# -- the infer body -------------------------------------------------------------------------

Requested = list[tuple[str, str, bool | None]]  # (name, where, binary_data or None: default)


class _Decoded(NamedTuple):
    id: str | None  # the request's "id", echoed in the answer
    inputs: list[v2.Tensor]
    requested: Requested
    binary_default: bool  # parameters.binary_data_output


class _InputParams(msgspec.Struct):
    binary_data_size: int | msgspec.UnsetType = msgspec.UNSET


class _Input(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]
    data: Any = msgspec.UNSET
    parameters: _InputParams = msgspec.field(default_factory=_InputParams)


class _OutputParams(msgspec.Struct):
    binary_data: bool | msgspec.UnsetType = msgspec.UNSET


class _Output(msgspec.Struct):
    name: str
    parameters: _OutputParams = msgspec.field(default_factory=_OutputParams)


class _Params(msgspec.Struct):
    binary_data_output: bool | msgspec.UnsetType = msgspec.UNSET


class _Request(msgspec.Struct):
    inputs: list[_Input]
    outputs: list[_Output] | msgspec.UnsetType = msgspec.UNSET
    id: Any = None
    parameters: _Params = msgspec.field(default_factory=_Params)


# A well-formed header is parsed and its types checked in C in one pass; one it refuses is
# walked by `_checked_request`, whose job is the message naming the field.
_REQUEST = msgspec.json.Decoder(_Request)


def _decode(body: bytes, headers: dict[bytes, bytes]) -> _Decoded:
    """The request id, inputs, requested outputs and binary_data_output of one infer body."""
    head, rest = _split(body, headers)
    try:
        request = _REQUEST.decode(head)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _checked_request(head, rest)
    inputs, used = [], 0
    for i, item in enumerate(request.inputs):
        size = item.parameters.binary_data_size
        if size is msgspec.UNSET:
            if item.data is msgspec.UNSET:
                return _checked_request(head, rest)
            data = item.data
        else:
            if size < 0 or used + size > len(rest):
                return _checked_request(head, rest)
            data, used = rest[used : used + size], used + size
        inputs.append(v2.Tensor(item.name, item.datatype, item.shape, data, f"inputs[{i}]"))
    if used != len(rest):
        return _checked_request(head, rest)
    outputs = request.outputs if request.outputs is not msgspec.UNSET else ()
    requested: Requested = [
        (
            o.name,
            f"outputs[{i}]",
            None if o.parameters.binary_data is msgspec.UNSET else o.parameters.binary_data,
        )
        for i, o in enumerate(outputs)
    ]
    default = request.parameters.binary_data_output
    request_id = request.id if isinstance(request.id, str) else None
    return _Decoded(request_id, inputs, requested, default is True)


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


def _checked_request(head: bytes, rest: bytes) -> _Decoded:
    """The header the typed decoder refused, walked in Python to say what is wrong with it."""
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"body: not valid JSON: {e}", "body") from None
    if not isinstance(request, dict):
        raise InvalidInput("body: expected a JSON object with 'inputs'", "body")
    inputs, used = [], 0
    for i, item in enumerate(_list(request, "inputs")):
        where = f"inputs[{i}]"
        size = _binary_size(item, where)
        if size is None:
            if "data" not in item:
                raise InvalidInput(f"{where}: needs 'data' or a binary_data_size", where)
            data: Any = item["data"]
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
        flag = _params(item, where).get("binary_data")
        requested.append((_str(item, "name", where), where, _bool(flag, f"{where}.binary_data")))
    top = _params(request, "body")
    default = _bool(top.get("binary_data_output"), "parameters.binary_data_output") or False
    request_id = request.get("id")
    return _Decoded(request_id if isinstance(request_id, str) else None, inputs, requested, default)


def _encode(
    request_id: str | None,
    model: str,
    version: int,
    outputs: dict[str, np.ndarray],
    binary: dict[str, bool],
) -> Reply:
    entries: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for name, a in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(a.shape)}
        if binary[name]:
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


def _bool(value: Any, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{field}: expected true or false", field)
