"""Native bodies <-> requests and answers (docs/http.md), for the FastAPI front and the
TorchServe handler.

Pure functions over bytes and numpy arrays: no torch, no web framework. Every way a client body
can be wrong ends in a `SeqServeError` subclass (400, 413 or 415), never in anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import msgspec
import numpy as np
import orjson

from serving.engine.base import Ids
from serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from serving.fronts import ids
from serving.settings import Limits

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")


@dataclass
class Decoded:
    sequences: list[Ids]  # the body's, in order
    instances: bool  # the body used {"instances": [...]}: answer {"predictions": [...]}


class _Sequence(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    features: dict[str, list[int]]


class _Body(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    # UNSET, not None: a body naming a key as null is refused here, as the checks below do.
    features: dict[str, list[int]] | msgspec.UnsetType = msgspec.UNSET
    instances: list[_Sequence] | msgspec.UnsetType = msgspec.UNSET


# Typed decoders: a well-formed body is parsed and its types checked in C in one pass
# (~1.5 us for 60 ids). Any body they refuse is parsed again by the checks below, whose job
# is the message naming the field and position.
_DECODERS: dict[str, msgspec.json.Decoder[_Body] | msgspec.msgpack.Decoder[_Body]] = {
    JSON: msgspec.json.Decoder(_Body),
    MSGPACK: msgspec.msgpack.Decoder(_Body),
}


def decode(
    body: bytes, content_type: str | None, rows: Mapping[str, int], limits: Limits
) -> Decoded:
    """Parse and check one body (its size already within `limits.max_body_bytes`); `rows`
    maps each feature to its table's size. InvalidInput / PayloadTooLarge /
    UnsupportedMediaType if bad."""
    kind = _body_kind(content_type)
    try:
        doc = _DECODERS[kind].decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _decode_checked(_parse(body, kind), rows, limits)
    if doc.instances is msgspec.UNSET and doc.features is not msgspec.UNSET:
        raw = [doc.features]
    elif doc.features is msgspec.UNSET and doc.instances:
        if len(doc.instances) > limits.max_instances:
            raise _too_many_instances(len(doc.instances), limits)
        raw = [s.features for s in doc.instances]
    else:  # neither or both keys, or no instance: the checks below say which
        return _decode_checked(_parse(body, kind), rows, limits)
    total = 0
    for features in raw:
        for name, values in features.items():
            if name not in rows:
                return _decode_checked(_parse(body, kind), rows, limits)
            total += len(values)
    _check_total(total, limits)
    if doc.instances is msgspec.UNSET:
        return Decoded([_checked(raw[0], "features", rows)], False)
    return Decoded([_checked(f, f"instances[{i}].features", rows) for i, f in enumerate(raw)], True)


def _checked(features: dict[str, list[int]], where: str, rows: Mapping[str, int]) -> Ids:
    return {n: ids.checked(v, rows[n], f"{where}.{n}", f"{where}.{n}") for n, v in features.items()}


def _decode_checked(doc: Any, rows: Mapping[str, int], limits: Limits) -> Decoded:
    """The body the typed decoder refused, walked in Python to say what is wrong with it."""
    if not isinstance(doc, dict) or list(doc) not in (["features"], ["instances"]):
        raise InvalidInput(
            f"body: expected an object with one key, 'features' or 'instances'; got {_got(doc)}",
            field="body",
        )
    if "features" in doc:
        raw = [_features(doc["features"], "features", rows)]
    else:
        items = doc["instances"]
        if not isinstance(items, list):
            raise InvalidInput(
                f"instances: expected an array of objects, got {_kind(items)}", field="instances"
            )
        if not items:
            raise InvalidInput("instances: must hold at least one instance", field="instances")
        if len(items) > limits.max_instances:
            raise _too_many_instances(len(items), limits)
        raw = [_instance(item, i, rows) for i, item in enumerate(items)]
    _check_total(sum(len(v) for req in raw for v, _ in req.values()), limits)
    sequences: list[Ids] = [
        {name: _ids(v, field, rows[name]) for name, (v, field) in req.items()} for req in raw
    ]
    return Decoded(sequences=sequences, instances="instances" in doc)


def _too_many_instances(count: int, limits: Limits) -> PayloadTooLarge:
    return PayloadTooLarge(f"instances: {count} instances; the limit is {limits.max_instances}")


def _check_total(total: int, limits: Limits) -> None:
    if total > limits.max_ids_per_request:
        raise PayloadTooLarge(
            f"body holds {total} ids; the limit is {limits.max_ids_per_request} per request"
        )


def encode(
    answers: list[dict[str, np.ndarray]], instances: bool, accept: str | None
) -> tuple[bytes, str]:
    """Answers (feature -> float32 [n, dim]) -> (body, media type); JSON unless Accept asks
    for msgpack. `instances` is Decoded.instances of the request."""
    if not instances and len(answers) != 1:
        raise ValueError(f"a single-sequence answer needs exactly one result, got {len(answers)}")
    media = _accepted_msgpack(accept)
    if media is not None:
        maps: list[dict[str, Any]] = [
            {"embeddings": {f: _packed(a) for f, a in ans.items()}} for ans in answers
        ]
        doc: Any = {"predictions": maps} if instances else maps[0]
        return _MSGPACK_ENCODER.encode(doc), media
    maps = [{"embeddings": {f: json_floats(a) for f, a in ans.items()}} for ans in answers]
    doc = {"predictions": maps} if instances else maps[0]
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), JSON


def encode_error(code: int, type_name: str, message: str) -> bytes:
    return orjson.dumps({"code": code, "type": type_name, "message": message})


# -- decoding -------------------------------------------------------------------------------


def _body_kind(content_type: str | None) -> str:
    if not content_type or not content_type.strip():
        return JSON  # no Content-Type: JSON, the documented default
    media = content_type.split(";")[0].strip().lower()  # parameters (charset=utf-8) ignored
    if media == JSON:
        return JSON
    if media in MSGPACK_TYPES:
        return MSGPACK
    raise UnsupportedMediaType(
        f"content type '{_clip(content_type)}' is not supported; use {JSON} or {MSGPACK}"
    )


def _parse(body: bytes, kind: str) -> Any:
    if kind == JSON:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"body: not valid JSON: {e}", field="body") from None
    try:
        # strict_map_key: map keys are str (or bytes); raw=False: str must be valid UTF-8.
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises ValueError, TypeError, StackError, ... on bad input
        why = _clip(str(e)) or type(e).__name__
        raise InvalidInput(f"body: not valid msgpack: {why}", field="body") from None


def _instance(item: Any, i: int, rows: Mapping[str, int]) -> dict[str, tuple[list[Any], str]]:
    where = f"instances[{i}]"
    if not isinstance(item, dict) or list(item) != ["features"]:
        raise InvalidInput(
            f"{where}: expected an object with one key, 'features'; got {_got(item)}",
            field="instances",
            position=i,
        )
    return _features(item["features"], f"{where}.features", rows)


def _features(obj: Any, where: str, rows: Mapping[str, int]) -> dict[str, tuple[list[Any], str]]:
    """Check the shape of one features map; ids are converted later, once all are counted."""
    if not isinstance(obj, dict):
        raise InvalidInput(
            f"{where}: expected an object of feature -> ids, got {_kind(obj)}", field=where
        )
    out: dict[str, tuple[list[Any], str]] = {}
    for name, values in obj.items():
        field = f"{where}.{_clip(name) if isinstance(name, str) else _show(name)}"
        if name not in rows:
            raise InvalidInput(f"{field}: unknown feature; known: {', '.join(rows)}", field=field)
        if not isinstance(values, list):
            raise InvalidInput(
                f"{field}: expected an array of integer ids, got {_kind(values)}", field=field
            )
        out[name] = (values, field)
    return out


def _ids(values: list[Any], field: str, rows: int) -> np.ndarray:
    """A list of ids -> int64, every one an integer (not bool, not float) in [0, rows)."""
    pos = ids.not_integers(values)
    if pos is not None:
        raise InvalidInput(
            f"{field}[{pos}]: expected an integer id in [0, {rows}), got {_kind(values[pos])}",
            field=field,
            position=pos,
        )
    return ids.checked(values, rows, field, field)


def _got(x: Any) -> str:
    if not isinstance(x, dict):
        return _kind(x)
    keys = [_show(k) for k in list(x)[:4]] + (["..."] if len(x) > 4 else [])
    return f"keys {', '.join(keys)}" if x else "an empty object"


_KINDS = {type(None): "null", list: "an array", dict: "an object", bytes: "binary data"}


def _kind(x: Any) -> str:
    """How a decoded value reads in a message, in JSON's words."""
    if isinstance(x, bool):
        return f"boolean {str(x).lower()}"
    if isinstance(x, int | float):
        return f"{type(x).__name__} {x!r}"
    if isinstance(x, str):
        return f"string {_show(x)}"
    return _KINDS.get(type(x), type(x).__name__)


def _show(x: Any) -> str:
    return _clip(repr(x)) if isinstance(x, str | bytes) else type(x).__name__


def _clip(s: str, limit: int = 64) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."


# -- encoding -------------------------------------------------------------------------------


def _accepted_msgpack(accept: str | None) -> str | None:
    """The msgpack media type Accept names, or None: JSON (also for */*, none or others)."""
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in MSGPACK_TYPES:
            return media
    return None


# JSON numbers: orjson prints a float32 array as each value's shortest decimal that reads back
# as that float32 when parsed straight to float32. JSON clients (Python, numpy, JS) parse a
# number to a double and round that to float32, and rounding twice can pick the wrong
# neighbour: float32 0x15AE43FD prints as 7.038531e-26, whose nearest double is exactly the
# midpoint between it and 0x15AE43FE, and ties-to-even then gives 0x15AE43FE. A run over all
# 2**32 bit patterns with orjson 3.13 (pinned) found only that value and its negative, so
# `json_floats` hands orjson the float32 rows as they are (the cheapest print: ~17 ns a
# value), unless they hold one of those two; then `exact_floats` below, slower, sends each
# value as the double nearest its 8-significant-digit decimal, or its 9-digit one where 8
# digits do not pin the float32 (9 always do: they sit within 5e-9, relative, of it, far from
# the rounding midpoints at >= 3e-8). Each double is checked, vectorised, to round back to its
# float32 bits, so exactness does not rest on the argument; a miss would go out as its exact
# double.
_DOUBLE_ROUNDING_TRAP = 0x15AE43FD  # and its negative: the sign bit is masked off


def json_floats(a: np.ndarray) -> np.ndarray:
    """float32 values as orjson should print them: themselves, or `exact_floats`' doubles."""
    a = np.ascontiguousarray(a, dtype=np.float32)  # orjson wants C-contiguous native arrays
    bits = a.reshape(-1).view(np.uint32)
    if ((bits & 0x7FFFFFFF) == _DOUBLE_ROUNDING_TRAP).any():
        return exact_floats(a)
    return a


_P10 = 10.0 ** np.arange(-64, 65)  # _P10[k] = 10**(k - 64), exact for |k - 64| <= 22


def exact_floats(a: np.ndarray) -> np.ndarray:
    """float32 values -> float64 values whose shortest print reads back as the same float32."""
    a = np.ascontiguousarray(a, dtype=np.float32)  # orjson wants C-contiguous native arrays
    bits = a.reshape(-1).view(np.uint32)
    x = a.reshape(-1).astype(np.float64)
    mag = np.abs(x)
    finite = (mag > 0) & (mag < np.inf)  # 0 (-0.0 too), inf and nan: any scale keeps them
    k = (71 - np.floor(np.log10(np.where(finite, mag, 1.0)))).astype(np.intp)
    p = _P10.take(k)  # 10**(7 - e) for |x| in [10**e, 10**(e+1)): x * p has 8 digits
    y = x * p
    np.rint(y, out=y)
    y /= p
    miss = np.flatnonzero(y.astype(np.float32).view(np.uint32) != bits)
    if miss.size:  # 8 digits were not enough for these: 9 digits always are
        p = _P10.take(k[miss] + 1)
        y9 = np.rint(x[miss] * p) / p
        ok = y9.astype(np.float32).view(np.uint32) == bits[miss]
        y[miss] = np.where(ok, y9, x[miss])
    return y.reshape(a.shape)


_MSGPACK_ENCODER = msgspec.msgpack.Encoder()
_LE_FLOAT32 = np.dtype("<f4")


def _packed(a: np.ndarray) -> dict[str, Any]:
    """The rows as msgpack's bin, read straight from the answer's buffer (one copy, into the
    body); the same bytes msgpack.packb(use_bin_type=True) writes."""
    if a.dtype != _LE_FLOAT32 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=_LE_FLOAT32)
    return {"shape": list(a.shape), "dtype": "float32", "data": a.data}
