"""Weights for the sharded model: safetensors slices, a DCP checkpoint, or seeded random.

Each rank reads only its own column slices, so its memory grows with its shards, never with
whole tables. Shapes and names are checked in the driver before any rank starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from serving.config import ModelSpec, TableSpec
from serving.engine.model import LocalShard, local_shards
from serving.errors import SpecError

# Rows per copy step: bounds the temporary memory and paces the progress bar.
CHUNK_ROWS = 1 << 16


def check(spec: ModelSpec) -> None:
    """Fail fast, in the driver, on a missing table or a wrong shape."""
    w = spec.weights
    if w is None:
        return
    if w.safetensors is not None:
        _check_safetensors(spec, w.safetensors)
    elif w.dcp is not None:
        from serving.engine import dcp

        dcp.check(spec, w.dcp)


def _check_safetensors(spec: ModelSpec, path: Path) -> None:
    if not path.is_file():
        raise SpecError(f"weights: safetensors file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            for t in spec.tables:
                if t.name not in names:
                    raise SpecError(f"table '{t.name}': no tensor named '{t.name}' in {path.name}")
                sl = f.get_slice(t.name)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                want = (t.num_embeddings, t.embedding_dim)
                if shape != want:
                    raise SpecError(
                        f"table '{t.name}': tensor shape {list(shape)} in {path.name} is not "
                        f"[num_embeddings, embedding_dim] = {list(want)}"
                    )
                if dtype != "F32":
                    raise SpecError(f"table '{t.name}': tensor dtype {dtype} is not F32")
    except SpecError:
        raise
    except Exception as e:  # safetensors raises its own types for a corrupt header
        raise SpecError(f"weights: cannot read {path}: {e}") from e


def load(spec: ModelSpec, model: torch.nn.Module, rank: int) -> None:
    """Fill this rank's shards of `model` (collective for DCP: every rank calls it)."""
    shards = list(local_shards(spec, model))
    w = spec.weights
    if w is not None and w.dcp is not None:
        from serving.engine import dcp

        dcp.load(spec, model, w.dcp)
        return
    total = sum(s.tensor.numel() * 4 for s in shards)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"rank {rank} weights", disable=None)
    with bar, torch.no_grad():
        if w is not None and w.safetensors is not None:
            _load_safetensors(shards, w.safetensors, bar)
        else:
            _load_random(spec, shards, bar)


def _load_safetensors(shards: list[LocalShard], path: Path, bar: tqdm) -> None:
    with safe_open(str(path), framework="pt") as f:
        for s in shards:
            sl = f.get_slice(s.table)
            (r0, r1), (c0, c1) = s.rows, s.cols
            for a in range(r0, r1, CHUNK_ROWS):
                b = min(a + CHUNK_ROWS, r1)
                s.tensor[a - r0 : b - r0].copy_(sl[a:b, c0:c1])
                bar.update((b - a) * (c1 - c0) * 4)


def _load_random(spec: ModelSpec, shards: list[LocalShard], bar: tqdm) -> None:
    by_table = {t.name: t for t in spec.tables}
    for s in shards:
        (r0, r1), (c0, c1) = s.rows, s.cols
        for a, rows in random_chunks(spec, by_table[s.table]):
            lo, hi = max(a, r0), min(a + len(rows), r1)
            if lo < hi:
                s.tensor[lo - r0 : hi - r0].copy_(rows[lo - a : hi - a, c0:c1])
                bar.update((hi - lo) * (c1 - c0) * 4)


def random_chunks(spec: ModelSpec, table: TableSpec) -> Iterator[tuple[int, torch.Tensor]]:
    """The seeded random rows of `table`, chunk by chunk: the same on every rank and run."""
    index = [t.name for t in spec.tables].index(table.name)
    gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + index)
    bound = 1.0 / table.num_embeddings**0.5
    for a in range(0, table.num_embeddings, CHUNK_ROWS):
        n = min(CHUNK_ROWS, table.num_embeddings - a)
        yield a, (torch.rand(n, table.embedding_dim, generator=gen) * 2 - 1) * bound


def random_table(spec: ModelSpec, table: TableSpec) -> torch.Tensor:
    return torch.cat([rows for _, rows in random_chunks(spec, table)])


def full_tables(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Every table whole, in one process: for the unsharded reference and demo weights."""
    w = spec.weights
    if w is not None and w.safetensors is not None:
        with safe_open(str(w.safetensors), framework="pt") as f:
            return {t.name: f.get_tensor(t.name) for t in spec.tables}
    if w is not None and w.dcp is not None:
        from serving.engine import dcp

        return dcp.full_tables(spec, w.dcp)
    return {t.name: random_table(spec, t) for t in spec.tables}
