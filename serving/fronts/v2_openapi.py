"""The v2 REST routes in the OpenAPI document, so /docs shows them and schema-driven fuzzers
(schemathesis, in tests/http/test_fuzz.py) exercise them. `V2Rest` answers them outside
FastAPI's routing; these are descriptions of what it does, JSON form only (the binary tensor
data extension is framing OpenAPI cannot state)."""

from __future__ import annotations

from typing import Any

from serving.config import ModelSpec
from serving.fronts.schemas import ids

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
ERRORS = {
    400: "malformed body, unknown input or output, bad datatype or shape, id out of range, "
    "lengths that do not sum",
    401: "a bearer token is required (the server has --auth-token) and was missing or wrong",
    404: "unknown model or version",
    413: "body, ids or sequences over the limit",
    415: "content type other than JSON or octet-stream",
    503: "not ready, or the queue is full (Retry-After)",
    504: "the request waited past its deadline",
}
TENSOR_META: dict[str, Any] = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": ERRORS[c], "content": {"application/json": {"schema": ERROR}}}
        for c in codes
    }


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _flag(name: str) -> dict[str, Any]:
    return {"type": "object", "required": [name], "properties": {name: {"type": "boolean"}}}


def _input(feature: str, rows: int) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"type": "string", "enum": [feature]},
            "datatype": {"type": "string", "enum": ["INT64", "INT32"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 1},
            "data": ids(rows),
        },
    }


def _infer_request(spec: ModelSpec) -> dict[str, Any]:
    tables = spec.table_of()
    inputs = [_input(f, tables[f].num_embeddings) for f in spec.features]
    output = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "enum": list(spec.features)}},
    }
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "items": {"oneOf": inputs}},
            "outputs": {"type": "array", "items": output},
        },
    }


INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "model_version", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {
            "type": "array",
            "items": {
                **TENSOR_META,
                "properties": {
                    **TENSOR_META["properties"],
                    "data": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
    },
}
MODEL_METADATA = {
    "type": "object",
    "required": ["name", "versions", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": TENSOR_META},
        "outputs": {"type": "array", "items": TENSOR_META},
    },
}
SERVER_METADATA = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}},
    },
}


def v2_paths(spec: ModelSpec, version: int, secured: bool) -> dict[str, Any]:
    """OpenAPI path items of the v2 REST routes, for the one model (and version) served."""
    model = {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": [spec.name]},
    }
    served = {"type": "string", "enum": [str(version)]}
    versions = {"name": "version", "in": "path", "required": True, "schema": served}
    security: dict[str, Any] = {"security": [{"HTTPBearer": []}]} if secured else {}
    guard: tuple[int, ...] = (401,) if secured else ()

    def get(summary: str, ok: dict[str, Any], *codes: int, open_: bool = False) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "tags": ["Open Inference Protocol v2"],
                **({} if open_ else security),
                "responses": {"200": ok, **_errors(*codes, *(() if open_ else guard))},
            }
        }

    ready = _ok("ready", _flag("ready"))
    not_ready = {"503": _ok("not ready yet", _flag("ready"))}
    infer = {
        "post": {
            "summary": "Embeddings of each feature's ids (JSON tensors; binary extension too)",
            "tags": ["Open Inference Protocol v2"],
            **security,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _infer_request(spec)},
                    "application/octet-stream": {},
                },
            },
            "responses": {
                "200": {
                    "description": "one FP32 [n, dim] output per feature named",
                    "content": {
                        "application/json": {"schema": INFER_RESPONSE},
                        "application/octet-stream": {},
                    },
                },
                **_errors(400, 404, 413, 415, 503, 504, *guard),
            },
        }
    }
    health_ready = get("Server ready", ready, open_=True)
    health_ready["get"]["responses"].update(not_ready)
    model_ready = get("Model ready", _ok("ready", _flag("ready")), 404, open_=True)
    model_ready["get"]["responses"].update(not_ready)
    return {
        "/v2": get("Server metadata", _ok("server metadata", SERVER_METADATA)),
        "/v2/health/live": get("Server live", _ok("live", _flag("live")), open_=True),
        "/v2/health/ready": health_ready,
        "/v2/models/{model}": {
            "parameters": [model],
            **get("Model metadata", _ok("model metadata", MODEL_METADATA), 404),
        },
        "/v2/models/{model}/ready": {"parameters": [model], **model_ready},
        "/v2/models/{model}/infer": {"parameters": [model], **infer},
        "/v2/models/{model}/versions/{version}/infer": {"parameters": [model, versions], **infer},
    }
