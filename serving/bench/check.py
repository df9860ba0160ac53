"""Is an answer exact? Every row compared bit for bit (uint32 views) with the model's tables,
whichever format carried it (native JSON or msgpack, v2 REST binary, v2 gRPC); the Sampler
checks a level's answers as they come."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import orjson

from serving.bench import v2
from serving.bench.mix import Pool
from serving.config import ModelSpec

if TYPE_CHECKING:
    import torch

MAX_EXAMPLES = 5


def feature_bits(spec: ModelSpec, tables: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Feature -> its whole table, as answers carry it (fp16 and int8 tables dequantized), as
    uint32 [rows, dim]; `tables` the float32 weights, from weights.full_tables."""
    from serving.engine.model import served_tables

    served = served_tables(spec, tables)
    bits = {n: t.contiguous().numpy().view(np.uint32) for n, t in served.items()}
    return {f: bits[t.name] for f, t in spec.table_of().items()}


def mismatch(
    got: Any, want: Mapping[str, Any], bits: Mapping[str, np.ndarray], packed: bool
) -> str:
    """Why one `embeddings` map differs from the table rows of its ids; '' when exact. Its
    values: JSON lists of rows, msgpack's packed arrays (`packed`) or float32 numpy arrays."""
    if not isinstance(got, dict) or set(got) != set(want):
        return f"features {sorted(got) if isinstance(got, dict) else got!r} != {sorted(want)}"
    for f, ids in want.items():
        table, e = bits[f], got[f]
        if isinstance(e, np.ndarray):
            if e.dtype != np.float32:
                return f"{f}: dtype {e.dtype}, not float32"
            a = e
        elif packed:
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
    content: bytes,
    fmt: str,
    want: Mapping[str, Any],
    bits: Mapping[str, np.ndarray],
    head: bytes = b"",
) -> str:
    """The answer to one single-sequence body of `fmt` (the body, and for v2-binary the
    answer's HTTP head, which holds its Inference-Header-Content-Length); '' when exact, else
    why not."""
    try:
        if fmt == v2.REST:
            return mismatch(v2.read_rest(content, v2.header_length(head)), want, bits, True)
        if fmt == v2.GRPC:
            return mismatch(v2.read_grpc(content), want, bits, True)
        doc = msgpack.unpackb(content) if fmt == "msgpack" else orjson.loads(content)
        if not isinstance(doc, dict) or "embeddings" not in doc:
            return f"no 'embeddings' in the answer: {content[:80]!r}"
        return mismatch(doc["embeddings"], want, bits, fmt == "msgpack")
    except Exception as e:  # any malformed 200 is a wrong answer, not a crash
        return f"unreadable 200: {e!r}"


@dataclass
class Sampler:
    """Checks answers as they come: all of the warm-up, every `every`th of each client after."""

    pool: Pool
    fmt: str
    bits: Mapping[str, np.ndarray]
    start: float  # perf_counter() at the end of the warm-up
    every: int
    checked: int = 0
    wrong: int = 0
    examples: list[str] = field(default_factory=list)
    stash: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_ok(
        self, worker: int, n: int, t0: float, index: int, content: bytes, head: bytes = b""
    ) -> None:
        if t0 < self.start:
            self.check(index, content, head)  # unmeasured: check it now
        elif self.every > 0 and n % self.every == 0:
            self.stash.append((index, content, head))  # measured: check after the level

    def check(self, index: int, content: bytes, head: bytes = b"") -> None:
        why = check_single(content, self.fmt, self.pool.requests[index], self.bits, head)
        with self.lock:
            self.checked += 1
            if why:
                self.wrong += 1
                if len(self.examples) < MAX_EXAMPLES:
                    self.examples.append(f"{self.fmt} request {index}: {why}")

    def finish(self) -> None:
        for index, content, head in self.stash:
            self.check(index, content, head)
        self.stash.clear()
