"""Model specs and request batches the distributed tests share."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.config import ModelSpec, parse_spec
from serving.engine.base import Engine
from serving.engine.factory import create

ENGINES = ["local", "distributed"]
# The local engine's layouts (sharding.pack): every test of it runs both.
PACKS = ("device", "rank")


def packed(spec: ModelSpec, pack: str) -> ModelSpec:
    """`spec` with the local engine's layout `pack`."""
    return spec.model_copy(update={"sharding": spec.sharding.model_copy(update={"pack": pack})})


def assert_same(want: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> None:
    """Two engines' answers to one batch, bit for bit."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        assert a.keys() == b.keys(), i
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (i, k)
            assert np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)), (i, k)


def engine_for(kind: str, spec: ModelSpec, dispatch: str = "split", device: str = "cpu") -> Any:
    """An engine of `kind` for the tests: one thread per rank process, so ranks share the
    2 cores evenly. A context manager: start on enter, close on exit."""
    engine: Engine = create(spec, kind, device=device, dispatch=dispatch)
    if kind == "distributed":
        engine.threads = 1  # type: ignore[attr-defined]
    return engine


def spec(world: int, dim: int, tables: list[tuple[Any, ...]], seed: int = 0) -> ModelSpec:
    """tables: (name, rows, features, placement[, dim[, dtype]]) with placement a rank list
    (column-wise), an int (table-wise) or None (left out: one shard per rank); a table's own
    dim, when given, stands in for `dim`, and its dtype is fp32 unless given."""
    placements: dict[str, Any] = {}
    for name, _, _, where, *_ in tables:
        if isinstance(where, list):
            placements[name] = {"column_wise": where}
        elif isinstance(where, int):
            placements[name] = {"table_wise": where}
    return parse_spec(
        {
            "name": "t",
            "tables": [
                {
                    "name": n,
                    "num_embeddings": r,
                    "embedding_dim": own[0] if own else dim,
                    "dtype": own[1] if len(own) > 1 else "fp32",
                    "features": f,
                }
                for n, r, f, _, *own in tables
            ],
            "sharding": {"world_size": world, "tables": placements},
            "seed": seed,
        }
    )


def requests(
    spec: ModelSpec, count: int, seed: int = 0, max_len: int = 6
) -> list[dict[str, np.ndarray]]:
    """Random requests plus the edge cases: empty sequences, repeats, first and last rows."""
    rng = np.random.default_rng(seed)
    rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
    feats = spec.features
    out: list[dict[str, np.ndarray]] = []
    for _ in range(count):
        named = [f for f in feats if rng.random() < 0.7]
        out.append({f: rng.integers(0, rows[f], size=rng.integers(0, max_len + 1)) for f in named})
    edge = {f: np.array([0, rows[f] - 1, rows[f] - 1, 0], dtype=np.int64) for f in feats}
    out[:0] = [edge, {f: np.zeros(0, dtype=np.int64) for f in feats}, {}]
    return out
