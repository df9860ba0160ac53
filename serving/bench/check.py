"""Is an answer exact? Every row compared bit for bit (uint32 views) with the model's tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import orjson

from serving.config import ModelSpec

if TYPE_CHECKING:
    import torch


def feature_bits(spec: ModelSpec, tables: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Feature -> its whole table as uint32 [rows, dim]; `tables` from weights.full_tables."""
    bits = {n: t.contiguous().numpy().view(np.uint32) for n, t in tables.items()}
    return {f: bits[t.name] for f, t in spec.table_of().items()}


def mismatch(
    got: Any, want: Mapping[str, Any], bits: Mapping[str, np.ndarray], packed: bool
) -> str:
    """Why one `embeddings` map differs from the table rows of its ids; '' when exact."""
    if not isinstance(got, dict) or set(got) != set(want):
        return f"features {sorted(got) if isinstance(got, dict) else got!r} != {sorted(want)}"
    for f, ids in want.items():
        table, e = bits[f], got[f]
        if packed:
            if e.get("dtype") != "float32" or len(e["data"]) != 4 * int(np.prod(e["shape"])):
                return f"{f}: bad packed array {e.get('shape')} {e.get('dtype')}"
            a = np.frombuffer(e["data"], "<f4").reshape(e["shape"])
        else:
            a = np.asarray(e, dtype=np.float32)
            a = a.reshape(0, table.shape[1]) if a.size == 0 else a
        if a.shape != (len(ids), table.shape[1]):
            return f"{f}: shape {a.shape} for {len(ids)} ids"
        if not np.array_equal(a.view(np.uint32), table[np.asarray(ids, dtype=np.int64)]):
            return f"{f}: rows differ from the table"
    return ""


def check_single(
    content: bytes, fmt: str, want: Mapping[str, Any], bits: Mapping[str, np.ndarray]
) -> str:
    """The answer to one `{"features": ...}` body; '' when exact, else why not."""
    try:
        doc = msgpack.unpackb(content) if fmt == "msgpack" else orjson.loads(content)
        if not isinstance(doc, dict) or "embeddings" not in doc:
            return f"no 'embeddings' in the answer: {content[:80]!r}"
        return mismatch(doc["embeddings"], want, bits, fmt == "msgpack")
    except Exception as e:  # any malformed 200 is a wrong answer, not a crash
        return f"unreadable 200: {e!r}"
