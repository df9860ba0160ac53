"""The plan, per pack: which column shards it holds, packed and grouped into FBGEMM kernels.

A pack is the ranks whose shards live in one memory: by default every rank on one device (a
CPU, or one GPU), or each rank on its own (`sharding.pack: rank`). A pack's shards of one table
are packed side by side into one FBGEMM table (a "piece"), in the table's column order. When a
pack holds every shard of a table, as one device does on a CPU, the piece is the whole table:
an id is one memory read, and the kernel's output rows are the answer's rows, with no stitch.
Otherwise (shards 0 and 2 of a width-16 table on rank 0: one [rows, 32] piece holding columns
[0, 16) and [32, 48)) the piece's rows are stitched into their columns of the answer.

FBGEMM's sequence (PoolingMode.NONE) kernels take one width per call, so a pack's pieces are
grouped by width: a pack holding a packed width-32 piece beside a table-wise table of width 64
gets two kernels. Stored dtypes may differ within one call (the inference kernel reads each
table in its own format and writes float32), so fp32, fp16 and int8 pieces of one width share
a kernel. Each kernel looks up one "slot" per (piece, feature of its table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serving.config import Dtype, ModelSpec

# (from, to) packed columns of a piece -> (from, to) columns of the answer row
Copy = tuple[int, int, int, int]


@dataclass(frozen=True)
class Piece:
    """One pack's shards of one table, in column order: one FBGEMM table."""

    table: str
    rows: int
    dtype: Dtype
    shards: tuple[int, ...]  # the shards' positions in the table's column order
    columns: tuple[tuple[int, int], ...]  # each shard's answer columns [start, end)

    @property
    def width(self) -> int:
        return sum(end - start for start, end in self.columns)

    @property
    def name(self) -> str:
        return f"{self.table}/{'+'.join(map(str, self.shards))}"

    def copies(self) -> tuple[Copy, ...]:
        """Where the packed columns go in the answer; adjacent shards make one range."""
        out: list[Copy] = []
        at = 0
        for start, end in self.columns:
            if out and out[-1][1] == at and out[-1][3] == start:
                s0, _, d0, _ = out[-1]
                out[-1] = (s0, at + end - start, d0, end)
            else:
                out.append((at, at + end - start, start, end))
            at += end - start
        return tuple(out)


@dataclass(frozen=True)
class Slot:
    """The ids of one feature looked up in one piece."""

    key: str
    key_index: int  # position of the key in the batch (spec feature order)
    piece: int  # index into the kernel's pieces
    copies: tuple[Copy, ...]
    whole: bool  # the piece is the whole table: its rows are the answer's rows, no stitch


@dataclass(frozen=True)
class KernelPlan:
    pack: int  # index into the packs
    ranks: tuple[int, ...]  # the pack's ranks
    width: int
    pieces: tuple[Piece, ...]
    slots: tuple[Slot, ...]


def packs(ranks_on: Sequence[object], pack: str) -> list[tuple[int, ...]]:
    """Ranks grouped into packs: by device (`ranks_on[r]` is rank r's device), in order of
    first rank, or one pack per rank."""
    if pack == "rank":
        return [(r,) for r in range(len(ranks_on))]
    groups: dict[object, list[int]] = {}
    for r, device in enumerate(ranks_on):
        groups.setdefault(device, []).append(r)
    return [tuple(g) for g in groups.values()]


def kernel_plans(spec: ModelSpec, groups: Sequence[Sequence[int]]) -> list[KernelPlan]:
    """Every pack's kernels, packs in order; within a pack, widths in order of first use."""
    plan = spec.plan()
    pack_of = {r: i for i, g in enumerate(groups) for r in g}
    key_index = {k: i for i, k in enumerate(spec.features)}
    by_pack: dict[int, dict[int, list[Piece]]] = {}
    for t in spec.tables:
        shards = plan[t.name].shards
        for p in sorted({pack_of[s.rank] for s in shards}):
            mine = [k for k, s in enumerate(shards) if pack_of[s.rank] == p]
            columns = tuple((shards[k].start, shards[k].end) for k in mine)
            piece = Piece(t.name, t.num_embeddings, t.dtype, tuple(mine), columns)
            by_pack.setdefault(p, {}).setdefault(piece.width, []).append(piece)
    tables = {t.name: t for t in spec.tables}
    kernels = []
    for p in sorted(by_pack):
        for width, pieces in by_pack[p].items():
            slots = tuple(
                Slot(f, key_index[f], i, q.copies(), q.width == tables[q.table].embedding_dim)
                for i, q in enumerate(pieces)
                for f in tables[q.table].features
            )
            kernels.append(KernelPlan(p, tuple(groups[p]), width, tuple(pieces), slots))
    return kernels
