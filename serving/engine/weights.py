"""Weights for the sharded model: safetensors slices, a DCP checkpoint, or seeded random.

Each rank reads only its own column slices, so its memory grows with its shards, never with
whole tables. Shapes and names are checked in the driver before any rank starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from serving.config import ModelSpec, TableSpec, unstorable, why_unstorable
from serving.engine import dcp, stored
from serving.engine.files import readable_file
from serving.engine.model import LocalShard
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
        dcp.check(spec, w.dcp)


def _check_safetensors(spec: ModelSpec, path: Path) -> None:
    readable_file(path, "safetensors file")
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
    """Fill this rank's shards of a DMP-sharded `model` (collective for DCP: every rank calls
    it)."""
    w = spec.weights
    if w is not None and w.dcp is not None:
        from serving.engine import dcp

        dcp.load(spec, model, w.dcp)
        return
    from serving.engine.distributed.dmp import local_shards

    fill(spec, list(local_shards(spec, model)), f"rank {rank} weights")


def fill(spec: ModelSpec, shards: list[LocalShard], label: str) -> None:
    """Write each shard's rows and columns into its tensor, from whichever source the spec
    names, in the table's stored dtype. In one process (no collective), so both engines load
    through it. Sources are read in chunks of whole rows: int8's scale is the whole row's."""
    tables = {t.name: t for t in spec.tables}
    by_table: dict[str, list[LocalShard]] = {}
    for s in shards:
        by_table.setdefault(s.table, []).append(s)
    total = sum((s.rows[1] - s.rows[0]) * (s.cols[1] - s.cols[0]) for s in shards)
    bar = tqdm(total=total * 4, unit="B", unit_scale=True, desc=label, disable=None)
    with bar, torch.no_grad():
        for name, mine in by_table.items():
            table = tables[name]
            first, end = min(s.rows[0] for s in mine), max(s.rows[1] for s in mine)
            for at, rows in source_chunks(spec, table, first, end):
                bad = unstorable(rows.numpy(), table.dtype)
                if bad is not None:
                    why = why_unstorable(table.dtype)
                    raise SpecError(f"table '{name}': weights row {at + bad} {why}")
                encoded = stored.encode(rows, table.dtype)
                for s in mine:
                    bar.update(4 * s.write(at, encoded))
    release_free_memory()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system. Loading frees a chunk's float32 rows and
    their encoded copy per step; glibc keeps such memory in its heap, and after an int8 load
    that was ~150 MB of resident memory no table used (measured on a 1M x 64 table)."""
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc only
        trim(0)


def source_chunks(
    spec: ModelSpec, table: TableSpec, first: int = 0, end: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """float32 whole rows of `table` covering [first, end), chunk by chunk, from the spec's
    weights (a chunk may be a reused buffer: use it before taking the next)."""
    end = table.num_embeddings if end is None else end
    w = spec.weights
    if w is not None and w.dcp is not None:
        from serving.engine import dcp

        # DCP reshards into whole tensors without a process group: one table at a time.
        whole = dcp.read_table(spec, w.dcp, table)
        for a in range(first, end, CHUNK_ROWS):
            yield a, whole[a : min(a + CHUNK_ROWS, end)]
    elif w is not None and w.safetensors is not None:
        yield from _safetensors_chunks(w.safetensors, table.name, first, end)
    else:
        for a, rows in random_chunks(spec, table):
            if a + len(rows) > first and a < end:
                yield a, rows


def _safetensors_chunks(
    path: Path, name: str, first: int, end: int
) -> Iterator[tuple[int, torch.Tensor]]:
    # Not safe_open: it memory-maps the file, and a column slice of a row-major tensor touches
    # every page, so the whole file would count in this process's memory. Instead read row
    # chunks into one reused buffer, which the caller cuts into its own columns.
    header, data_start = _safetensors_header(path)
    rows, dim = header[name]["shape"]
    begin = data_start + header[name]["data_offsets"][0]
    chunk = np.empty((min(CHUNK_ROWS, rows), dim), dtype="<f4")
    with open(path, "rb", buffering=0) as f:
        for a in range(first, end, CHUNK_ROWS):
            b = min(a + CHUNK_ROWS, end)
            f.seek(begin + a * dim * 4)
            view = chunk[: b - a]
            if f.readinto(view.data.cast("B")) != view.nbytes:
                raise SpecError(f"table '{name}': {path.name} is shorter than its header says")
            yield a, torch.from_numpy(view)


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The documented layout: u64 little-endian header size, JSON header, then the data."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size)), 8 + size


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
