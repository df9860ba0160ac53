"""Request and response shapes for the OpenAPI document.

Bodies are decoded and validated by `serving.fronts.codec` (fast, and the same for JSON and
msgpack); these schemas tell /docs and schema-driven clients what the contract is. They are written
inline, without $ref, so every schema stands alone inside the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from serving.config import ModelSpec


def ids(rows: int) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": rows - 1}}


def features(spec: ModelSpec) -> dict[str, Any]:
    """One sequence per feature of this model, ids bounded by its table."""
    tables = spec.table_of()
    return {
        "type": "object",
        "required": ["features"],
        "additionalProperties": False,
        "properties": {
            "features": {
                "type": "object",
                "additionalProperties": False,
                "properties": {f: ids(tables[f].num_embeddings) for f in spec.features},
            }
        },
    }


def instances(spec: ModelSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["instances"],
        "additionalProperties": False,
        "properties": {"instances": {"type": "array", "minItems": 1, "items": features(spec)}},
    }


ROWS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
EMBEDDINGS = {
    "type": "object",
    "required": ["embeddings"],
    "properties": {"embeddings": {"type": "object", "additionalProperties": ROWS}},
}
PREDICTIONS = {
    "type": "object",
    "required": ["predictions"],
    "properties": {"predictions": {"type": "array", "items": EMBEDDINGS}},
}
ERROR = {
    "type": "object",
    "required": ["code", "type", "message"],
    "properties": {
        "code": {"type": "integer"},
        "type": {"type": "string"},
        "message": {"type": "string"},
    },
}
ERRORS = {
    400: "malformed body, wrong types, unknown feature, id out of range",
    401: "a bearer token is required (the server has --auth-token) and was missing or wrong",
    403: "weight updates are off (the server was started without --allow-updates)",
    404: "unknown model",
    413: "body, ids or instances over the limit",
    415: "content type other than JSON or msgpack",
    503: "not ready, or the queue is full (Retry-After)",
    504: "the request waited past its deadline",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        c: {"description": ERRORS[c], "content": {"application/json": {"schema": ERROR}}}
        for c in codes
    }


def predict_openapi(spec: ModelSpec) -> dict[str, Any]:
    body = {"oneOf": [features(spec), instances(spec)]}
    model = {"type": "string", "enum": [spec.name], "description": "the served model's name"}
    return {
        "parameters": [{"name": "model", "in": "path", "required": True, "schema": model}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body}, "application/msgpack": {}},
        },
        "responses": {
            "200": {
                "description": "rows per feature, one per id, in request order",
                "content": {
                    "application/json": {"schema": {"oneOf": [EMBEDDINGS, PREDICTIONS]}},
                    "application/msgpack": {},
                },
            },
            **error_responses(400, 401, 404, 413, 415, 503, 504),
        },
    }


def weights_openapi() -> dict[str, Any]:
    """POST /models/{model}/weights: its two bodies (FastAPI sees only raw bytes)."""
    reload = {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {"safetensors": {"type": "string"}, "dcp": {"type": "string"}},
        "additionalProperties": False,
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "example": "a safetensors file of <table>.ids (int64 [k]) and <table>.rows",
                },
                "application/json": {"schema": reload},
            },
        }
    }
