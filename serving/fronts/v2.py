"""Open Inference Protocol v2 tensors <-> sequences (docs/protocols.md), for REST and gRPC.

Pure functions over numpy: each transport turns its request into `Tensor`s (JSON lists, raw
bytes or protobuf contents) and gets back checked sequences; every way a request can be wrong
is a `SeqServeError` naming the input and position.

- One input per feature, named as the feature, INT64 or INT32, shape [n]: one sequence.
- `<feature>.lengths` (shape [b], summing to n) cuts it into b sequences; when any feature
  has lengths, every feature named has lengths of the same b.
- One output per feature named, FP32 [n, dim], rows in id order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from serving.config import ModelSpec
from serving.engine.base import Ids
from serving.errors import InvalidInput, PayloadTooLarge
from serving.fronts import ids
from serving.settings import Limits

DATATYPES: dict[str, np.dtype[Any]] = {"INT64": np.dtype("<i8"), "INT32": np.dtype("<i4")}
LENGTHS = ".lengths"
PLATFORM = "pytorch_torchrec"
# Triton's extensions served (docs/protocols.md#routes); system_shared_memory only with
# --allow-shared-memory.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository", "statistics")
SHARED_MEMORY = "system_shared_memory"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@runtime_checkable
class Deferred(Protocol):
    """Data read only once its size is checked (an input in shared memory)."""

    nbytes: int

    def read(self) -> bytes: ...


class Tensor(NamedTuple):
    name: str
    datatype: str
    shape: Sequence[int]
    # a JSON list, raw little-endian bytes, a numpy array (gRPC typed contents) or Deferred
    data: Any
    where: str  # how a message names it: "inputs[1]"


@dataclass(frozen=True)
class Inference:
    sequences: list[Ids]
    features: list[str]  # the features named, in input order: the outputs there can be


def inference(inputs: Sequence[Tensor], rows: Mapping[str, int], limits: Limits) -> Inference:
    """Check the inputs and cut them into sequences; `rows[f]` is feature f's table size."""
    if not inputs:
        raise InvalidInput("inputs: at least one input (a feature's ids) is required", "inputs")
    by_name: dict[str, Tensor] = {}
    features: list[str] = []  # in input order
    lengths: dict[str, Tensor] = {}  # feature -> its '<feature>.lengths' input
    total = 0
    for t in inputs:
        name = t.name
        cuts = name.endswith(LENGTHS)
        base = name[: -len(LENGTHS)] if cuts else name
        if base not in rows:
            known = ", ".join(rows)
            raise InvalidInput(
                f"{t.where}: unknown input '{_clip(name)}'; inputs are the features ({known}), "
                f"each optionally with '<feature>{LENGTHS}'",
                t.where,
            )
        if name in by_name:
            raise InvalidInput(f"{t.where}: input '{name}' is given twice", t.where)
        if t.datatype not in DATATYPES:
            raise InvalidInput(
                f"{t.where} '{name}': datatype '{_clip(t.datatype)}' is not supported; "
                "use INT64 or INT32",
                t.where,
            )
        shape = t.shape
        if len(shape) != 1 or shape[0] < 0:
            raise InvalidInput(
                f"{t.where} '{name}': shape {list(shape)} is not supported; expected [n]",
                t.where,
            )
        if cuts:
            if shape[0] > limits.max_instances:
                raise PayloadTooLarge(
                    f"{t.where} '{name}': {shape[0]} sequences; the limit is "
                    f"{limits.max_instances} per request"
                )
            lengths[base] = t
        else:
            features.append(name)
            total += shape[0]
        by_name[name] = t
    if total > limits.max_ids_per_request:
        raise PayloadTooLarge(
            f"inputs hold {total} ids; the limit is {limits.max_ids_per_request} per request"
        )
    checked = {f: _ids(by_name[f], rows[f]) for f in features}
    if not lengths:
        return Inference([checked], features)
    return Inference(_cut(checked, lengths, features, limits), features)


def rows(answers: Sequence[Mapping[str, np.ndarray]], feature: str) -> np.ndarray:
    """One feature's rows of every sequence, in order: the output tensor [n, dim]."""
    if len(answers) == 1:
        return answers[0][feature]
    return np.concatenate([a[feature] for a in answers])


def selected(requested: Sequence[tuple[str, str]], features: Sequence[str]) -> list[str]:
    """The outputs to send: those requested as (name, where), or every feature named."""
    if not requested:
        return list(features)
    names: list[str] = []
    for name, where in requested:
        if name not in features:
            raise InvalidInput(
                f"{where}: '{_clip(name)}' is not an output of this request; its outputs are "
                f"the features it names ({', '.join(features)})",
                where,
            )
        if name in names:
            raise InvalidInput(f"{where}: output '{name}' is requested twice", where)
        names.append(name)
    return names


def server_metadata(version: str, shared_memory: bool = False) -> dict[str, Any]:
    extensions = [*EXTENSIONS, SHARED_MEMORY] if shared_memory else list(EXTENSIONS)
    return {"name": "seqserve", "version": version, "extensions": extensions}


def model_metadata(spec: ModelSpec, version: int) -> dict[str, Any]:
    dims = {f: t.embedding_dim for f, t in spec.table_of().items()}
    return {
        "name": spec.name,
        "versions": [str(version)],
        "platform": PLATFORM,
        "inputs": [{"name": f, "datatype": "INT64", "shape": [-1]} for f in spec.features],
        "outputs": [{"name": f, "datatype": "FP32", "shape": [-1, dims[f]]} for f in spec.features],
    }


# -- decoding -------------------------------------------------------------------------------


def _ids(t: Tensor, table_rows: int) -> np.ndarray:
    """A feature's ids as int64, each one in [0, table_rows)."""
    return ids.checked(_values(t), table_rows, f"{t.where} '{t.name}'", t.where)


def _values(t: Tensor) -> np.ndarray:
    """The tensor's n integers as int64, whichever way they came."""
    data = t.data
    # bytes first: the protocol check of Deferred costs microseconds, bytes are the hot path
    if isinstance(data, bytes | bytearray | memoryview):
        return _raw(t, data, len(data))
    if isinstance(data, list):
        arr = _json_ints(t)
    elif isinstance(data, np.ndarray):
        arr = data.astype(np.int64, copy=False)
    elif isinstance(data, Deferred):
        return _raw(t, data, data.nbytes)
    else:
        raise InvalidInput(f"{t.where} '{t.name}': 'data' must be an array of integers", t.where)
    n = t.shape[0]
    if arr.shape != (n,):
        raise InvalidInput(
            f"{t.where} '{t.name}': {arr.size} values of data for shape [{n}]", t.where
        )
    if t.datatype == "INT32" and arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
        pos = int(np.argmax((arr < -(2**31)) | (arr >= 2**31)))
        raise InvalidInput(f"{t.where} '{t.name}'[{pos}]: {int(arr[pos])} is not an INT32", t.where)
    return arr


def _raw(t: Tensor, data: bytes | bytearray | memoryview | Deferred, size: int) -> np.ndarray:
    """Little-endian integers in the body or in shared memory (read once its size is right)."""
    n, dtype = t.shape[0], DATATYPES[t.datatype]
    if size != n * dtype.itemsize:
        raise InvalidInput(
            f"{t.where} '{t.name}': {size} bytes of data; shape [{n}] of {t.datatype} "
            f"needs {n * dtype.itemsize}",
            t.where,
        )
    raw = data if isinstance(data, bytes | bytearray | memoryview) else data.read()
    # INT64 is read in place (no copy): nothing downstream writes to ids.
    return np.frombuffer(raw, dtype=dtype).astype(np.int64, copy=False)


def _json_ints(t: Tensor) -> np.ndarray:
    values: list[Any] = t.data
    pos = ids.not_integers(values)  # exactly int: not bool, not float
    if pos is None:
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pos = next(i for i, x in enumerate(values) if not _INT64_MIN <= x <= _INT64_MAX)
            raise InvalidInput(
                f"{t.where} '{t.name}'[{pos}]: {values[pos]} is not an {t.datatype}", t.where, pos
            ) from None
    got = type(values[pos]).__name__ if values[pos] is not None else "null"
    raise InvalidInput(f"{t.where} '{t.name}'[{pos}]: expected an integer, got {got}", t.where, pos)


def _cut(
    by_feature: Ids, lengths: Mapping[str, Tensor], features: Sequence[str], limits: Limits
) -> list[Ids]:
    """Cut each feature's ids by its lengths into b sequences."""
    for f in lengths:
        if f not in by_feature:
            t = lengths[f]
            raise InvalidInput(f"{t.where} '{t.name}': there is no input '{f}' to cut", t.where)
    missing = [f for f in features if f not in lengths]
    if missing:
        raise InvalidInput(
            f"inputs: '{missing[0]}' has no '{missing[0]}{LENGTHS}'; when one feature has "
            "lengths, every feature named needs them",
            "inputs",
        )
    counts = {f: _values(lengths[f]) for f in features}
    b = {f: len(c) for f, c in counts.items()}
    first = features[0]
    for f in features:
        t = lengths[f]
        if b[f] != b[first]:
            raise InvalidInput(
                f"{t.where} '{t.name}': {b[f]} sequences, but '{first}{LENGTHS}' has {b[first]}",
                t.where,
            )
        c = counts[f]
        if c.size and c.min() < 0:
            pos = int(np.argmax(c < 0))
            raise InvalidInput(f"{t.where} '{t.name}'[{pos}]: a length is negative", t.where, pos)
        if int(c.sum()) != len(by_feature[f]):
            raise InvalidInput(
                f"{t.where} '{t.name}': lengths sum to {int(c.sum())}, but '{f}' has "
                f"{len(by_feature[f])} ids",
                t.where,
            )
    if b[first] == 0:
        raise InvalidInput(f"{lengths[first].where}: at least one sequence is required", "inputs")
    if b[first] > limits.max_instances:
        raise PayloadTooLarge(
            f"inputs: {b[first]} sequences; the limit is {limits.max_instances} per request"
        )
    bounds = {f: np.concatenate([[0], np.cumsum(counts[f])]) for f in features}
    return [
        {f: by_feature[f][bounds[f][j] : bounds[f][j + 1]] for f in features}
        for j in range(b[first])
    ]


def _clip(s: str, limit: int = 64) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."
