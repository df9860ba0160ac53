"""The plan, per rank: which column shards it holds, packed and grouped into FBGEMM kernels.

A rank's shards of one table are packed side by side into one FBGEMM table (a "piece"): shards
0 and 2 of a width-16 table on rank 0 become one [rows, 32] table holding columns [0, 16) and
[32, 48). An id is then one memory read per rank instead of one per shard (CW splits a row into
as many reads as it has shards, each a likely cache miss), and one lookup slot per feature.

FBGEMM's sequence (PoolingMode.NONE) kernels take one width per call, so a rank's pieces are
grouped by width: a rank holding a packed width-32 piece beside a table-wise table of width 64
gets two kernels. Stored dtypes may differ within one call (the inference kernel reads each
table in its own format and writes float32), so fp32, fp16 and int8 pieces of one width share
a kernel. Each kernel looks up one "slot" per (piece, feature of its table) and copies
the slot's rows, column range by column range, into that feature's answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.config import Dtype, ModelSpec

# (from, to) packed columns of a piece -> (from, to) columns of the answer row
Copy = tuple[int, int, int, int]


@dataclass(frozen=True)
class Piece:
    """One rank's shards of one table, packed in column order: one FBGEMM table."""

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


@dataclass(frozen=True)
class KernelPlan:
    rank: int
    width: int
    pieces: tuple[Piece, ...]
    slots: tuple[Slot, ...]


def kernel_plans(spec: ModelSpec) -> list[KernelPlan]:
    """Every rank's kernels, ranks in order; within a rank, widths in order of first use."""
    plan = spec.plan()
    key_index = {k: i for i, k in enumerate(spec.features)}
    by_rank: dict[int, dict[int, list[Piece]]] = {}
    for t in spec.tables:
        shards = plan[t.name].shards
        for rank in sorted({s.rank for s in shards}):
            mine = [k for k, s in enumerate(shards) if s.rank == rank]
            columns = tuple((shards[k].start, shards[k].end) for k in mine)
            piece = Piece(t.name, t.num_embeddings, t.dtype, tuple(mine), columns)
            by_rank.setdefault(rank, {}).setdefault(piece.width, []).append(piece)
    features = {t.name: t.features for t in spec.tables}
    kernels = []
    for rank in sorted(by_rank):
        for width, pieces in by_rank[rank].items():
            slots = tuple(
                Slot(f, key_index[f], i, p.copies())
                for i, p in enumerate(pieces)
                for f in features[p.table]
            )
            kernels.append(KernelPlan(rank, width, tuple(pieces), slots))
    return kernels
