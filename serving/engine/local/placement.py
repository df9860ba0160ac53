"""The plan, per rank: which column shards it holds, grouped into FBGEMM kernels.

FBGEMM's sequence (PoolingMode.NONE) kernels take one width per call, so a rank's shards are
grouped by width: a rank holding CW shards of width 16 beside a table-wise table of width 64
gets two kernels. Each kernel looks up every feature of each table it holds a shard of: one
"slot" per (shard, feature), whose rows land in columns [start, end) of that feature's answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.config import ModelSpec


@dataclass(frozen=True)
class Piece:
    """One column shard held by a kernel: FBGEMM sees it as a table of `end - start` columns."""

    table: str
    shard: int  # k: the shard's position in the table's column order
    rows: int
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"{self.table}/{self.shard}"


@dataclass(frozen=True)
class Slot:
    """The ids of one feature looked up in one piece."""

    key: str
    key_index: int  # position of the key in the batch (spec feature order)
    piece: int  # index into the kernel's pieces
    start: int  # the answer columns this slot fills
    end: int


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
        for k, s in enumerate(plan[t.name].shards):
            width = s.end - s.start
            piece = Piece(t.name, k, t.num_embeddings, s.start, s.end)
            by_rank.setdefault(s.rank, {}).setdefault(width, []).append(piece)
    features = {t.name: t.features for t in spec.tables}
    kernels = []
    for rank in sorted(by_rank):
        for width, pieces in by_rank[rank].items():
            slots = tuple(
                Slot(f, key_index[f], i, p.start, p.end)
                for i, p in enumerate(pieces)
                for f in features[p.table]
            )
            kernels.append(KernelPlan(rank, width, tuple(pieces), slots))
    return kernels
