"""HTTP bodies <-> requests and answers (CONTRACT section 3), shared by both fronts.

Pure functions over bytes and numpy arrays: no torch, no web framework. Every way a client body
can be wrong ends in a `SeqServeError` subclass (400, 413 or 415), never in anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import orjson

from serving.config import ModelSpec
from serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from serving.settings import Limits

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class Decoded:
    requests: list[dict[str, np.ndarray]]  # one per sequence; feature -> int64 ids
    instances: bool  # the body used {"instances": [...]}: answer {"predictions": [...]}


def decode(body: bytes, content_type: str | None, spec: ModelSpec, limits: Limits) -> Decoded:
    """Parse and check one body; InvalidInput / PayloadTooLarge / UnsupportedMediaType if bad."""
    kind = _body_kind(content_type)
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"body is {len(body)} bytes; the limit is {limits.max_body_bytes} bytes"
        )
    doc = _parse(body, kind)
    if not isinstance(doc, dict) or list(doc) not in (["features"], ["instances"]):
        raise InvalidInput(
            f"body: expected an object with one key, 'features' or 'instances'; got {_got(doc)}",
            field="body",
        )
    if "features" in doc:
        raw = [_features(doc["features"], "features", spec)]
    else:
        items = doc["instances"]
        if not isinstance(items, list):
            raise InvalidInput(
                f"instances: expected an array of objects, got {_kind(items)}", field="instances"
            )
        if not items:
            raise InvalidInput("instances: must hold at least one instance", field="instances")
        if len(items) > limits.max_instances:
            raise PayloadTooLarge(
                f"instances: {len(items)} instances; the limit is {limits.max_instances}"
            )
        raw = [_instance(item, i, spec) for i, item in enumerate(items)]
    total = sum(len(ids) for req in raw for ids, _ in req.values())
    if total > limits.max_ids_per_request:
        raise PayloadTooLarge(
            f"body holds {total} ids; the limit is {limits.max_ids_per_request} per request"
        )
    rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
    requests = [
        {name: _ids(ids, field, rows[name]) for name, (ids, field) in req.items()} for req in raw
    ]
    return Decoded(requests=requests, instances="instances" in doc)


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
        return msgpack.packb(doc, use_bin_type=True), media
    maps = [{"embeddings": {f: exact_floats(a) for f, a in ans.items()}} for ans in answers]
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


def _instance(item: Any, i: int, spec: ModelSpec) -> dict[str, tuple[list[Any], str]]:
    where = f"instances[{i}]"
    if not isinstance(item, dict) or list(item) != ["features"]:
        raise InvalidInput(
            f"{where}: expected an object with one key, 'features'; got {_got(item)}",
            field="instances",
            position=i,
        )
    return _features(item["features"], f"{where}.features", spec)


def _features(obj: Any, where: str, spec: ModelSpec) -> dict[str, tuple[list[Any], str]]:
    """Check the shape of one features map; ids are converted later, once all are counted."""
    if not isinstance(obj, dict):
        raise InvalidInput(
            f"{where}: expected an object of feature -> ids, got {_kind(obj)}", field=where
        )
    known = spec.features
    known_set = set(known)
    out: dict[str, tuple[list[Any], str]] = {}
    for name, ids in obj.items():
        field = f"{where}.{_clip(name) if isinstance(name, str) else _show(name)}"
        if name not in known_set:
            raise InvalidInput(f"{field}: unknown feature; known: {', '.join(known)}", field=field)
        if not isinstance(ids, list):
            raise InvalidInput(
                f"{field}: expected an array of integer ids, got {_kind(ids)}", field=field
            )
        out[name] = (ids, field)
    return out


def _ids(ids: list[Any], field: str, rows: int) -> np.ndarray:
    """A list of ids -> int64, every one an integer in [0, rows).

    The checks run in C: `set(map(type, ...))` proves every element is exactly `int` (not
    bool, which np.asarray would quietly turn into 0/1 next to ints, and not float, which it
    would make the dtype of the whole array), np.array(..., int64) converts, and one vector
    comparison checks the range. Only a failing list is walked in Python, to name the element.
    """
    if set(map(type, ids)) <= {int}:
        try:
            arr = np.array(ids, dtype=np.int64)
        except OverflowError:  # an int beyond int64: out of range whatever the table
            pos = next((i for i, x in enumerate(ids) if not _INT64_MIN <= x <= _INT64_MAX), 0)
        else:
            bad = (arr < 0) | (arr >= rows)
            if not bad.any():
                return arr
            pos = int(np.argmax(bad))
        what = f"id {ids[pos]} is outside [0, {rows})"
    else:
        pos = next((i for i, x in enumerate(ids) if type(x) is not int), 0)
        what = f"expected an integer id in [0, {rows}), got {_kind(ids[pos])}"
    raise InvalidInput(f"{field}[{pos}]: {what}", field=field, position=pos)


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


# Why not orjson's own float32 printing: it prints the shortest decimal that reads back as the
# float32 when parsed straight to float32, but JSON clients (Python, numpy, JS) parse a number to
# a double and then round that to float32. Rounding twice can pick the wrong neighbour: float32
# 0x15AE43FD prints as 7.038531e-26, whose nearest double is exactly the midpoint between it and
# 0x15AE43FE, and ties-to-even then gives 0x15AE43FE. (A run over all 2**32 bit patterns with
# orjson 3.13 found only that value and its negative.) Exact doubles always round-trip but cost
# ~70% more bytes. So each value is sent as the double nearest its 8-significant-digit decimal,
# or its 9-digit one where 8 digits do not pin the float32 (9 always do: they sit within 5e-9,
# relative, of it, far from the rounding midpoints at >= 3e-8). orjson prints such a double as
# that short decimal, so the output stays within a few % of shortest float32. Each double is
# checked, vectorised, to round back to its float32 bits, so exactness does not rest on the
# argument; a miss would go out as its exact double. About 5-8 ms per million floats.
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


def _packed(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "data": a.tobytes()}
