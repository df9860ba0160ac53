"""The local engine's plan: shards per rank, grouped by width, and where each slot's rows go."""

from __future__ import annotations

import numpy as np

from serving.engine.layout import Layout
from serving.engine.local.placement import kernel_plans
from tests.distributed.plans import spec

# items [1, 0, 0] (width 4), cats [0, 1, 1] (width 4), shops table-wise on rank 1 (width 12)
SPEC = spec(
    2,
    12,
    [("items", 30, ["a", "b"], [1, 0, 0]), ("cats", 5, ["c"], [0, 1, 1]), ("shops", 7, ["d"], 1)],
)


def test_each_rank_gets_one_kernel_per_width_holding_its_shards_in_column_order() -> None:
    plans = kernel_plans(SPEC)
    assert [(p.rank, p.width) for p in plans] == [(0, 4), (1, 4), (1, 12)]
    rank0, rank1, rank1_wide = plans
    assert [(p.table, p.shard, p.start, p.end) for p in rank0.pieces] == [
        ("items", 1, 4, 8),
        ("items", 2, 8, 12),
        ("cats", 0, 0, 4),
    ]
    assert [(p.table, p.shard) for p in rank1.pieces] == [("items", 0), ("cats", 1), ("cats", 2)]
    assert [(p.table, p.start, p.end) for p in rank1_wide.pieces] == [("shops", 0, 12)]


def test_a_slot_per_feature_of_each_piece_writes_that_pieces_columns() -> None:
    rank0 = kernel_plans(SPEC)[0]
    # items serves a and b, cats serves c: two slots per items piece, one per cats piece.
    assert [(s.key, s.piece, s.start, s.end) for s in rank0.slots] == [
        ("a", 0, 4, 8),
        ("b", 0, 4, 8),
        ("a", 1, 8, 12),
        ("b", 1, 8, 12),
        ("c", 2, 0, 4),
    ]
    assert [s.key_index for s in rank0.slots] == [0, 1, 0, 1, 2]


def test_every_answer_column_is_written_by_exactly_one_slot() -> None:
    layout = Layout.of(SPEC)
    written = {k: np.zeros(layout.by_key[k].dim, dtype=int) for k in layout.keys}
    for plan in kernel_plans(SPEC):
        for s in plan.slots:
            written[s.key][s.start : s.end] += 1
    assert all((w == 1).all() for w in written.values()), written


def test_layout_views_slice_one_flat_buffer_per_key() -> None:
    layout = Layout.of(SPEC)
    counts = [2, 0, 3, 1]
    edges = layout.offsets(counts)
    assert edges == [0, 24, 24, 60, 72]
    flat = np.arange(edges[-1], dtype=np.float32)
    views = layout.views(flat, counts)
    assert [v.shape for v in views.values()] == [(2, 12), (0, 12), (3, 12), (1, 12)]
    assert views["c"][0, 0] == 24 and np.shares_memory(views["d"], flat)
