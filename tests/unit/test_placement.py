"""The local engine's plan: shards per pack (a device, or a rank), grouped by width, and where
each slot's rows go."""

from __future__ import annotations

import numpy as np
import pytest

from serving.engine.layout import Layout
from serving.engine.local.placement import Piece, kernel_plans, packs
from tests.distributed.plans import spec

# items [1, 0, 0] (width 4), cats [0, 1, 1] (width 4), shops table-wise on rank 1 (width 12)
SPEC = spec(
    2,
    12,
    [("items", 30, ["a", "b"], [1, 0, 0]), ("cats", 5, ["c"], [0, 1, 1]), ("shops", 7, ["d"], 1)],
)
PER_RANK = [(0,), (1,)]


def test_ranks_pack_by_device_or_one_by_one() -> None:
    assert packs(["cpu", "cpu", "cpu"], "device") == [(0, 1, 2)]
    assert packs(["cuda:0", "cuda:1", "cuda:0"], "device") == [(0, 2), (1,)]
    assert packs(["cpu", "cpu"], "rank") == [(0,), (1,)]


def test_one_device_holds_every_table_whole_with_no_stitch() -> None:
    # Both ranks on one device: items and cats become whole width-12 tables beside shops
    # (also 12 wide), all in one kernel whose output rows are the answer's rows.
    (plan,) = kernel_plans(SPEC, [(0, 1)])
    assert (plan.pack, plan.ranks, plan.width) == (0, (0, 1), 12)
    assert [(p.table, p.shards, p.columns) for p in plan.pieces] == [
        ("items", (0, 1, 2), ((0, 4), (4, 8), (8, 12))),
        ("cats", (0, 1, 2), ((0, 4), (4, 8), (8, 12))),
        ("shops", (0,), ((0, 12),)),
    ]
    assert [(s.key, s.whole, s.copies) for s in plan.slots] == [
        (k, True, ((0, 12, 0, 12),)) for k in "abcd"
    ]


def test_ranks_sharing_a_gpu_pack_together_and_stitch_across_gpus() -> None:
    # items [1, 0, 0], cats [0, 1, 1] with ranks 0 and 1 on two GPUs: as per rank, stitched.
    assert kernel_plans(SPEC, [(0,), (1,)]) == kernel_plans(SPEC, PER_RANK)
    world3 = spec(3, 16, [("items", 30, ["a"], [0, 2, 1, 0])])  # ranks 0 and 2 on one GPU
    first, second = kernel_plans(world3, [(0, 2), (1,)])
    assert first.pieces[0].columns == ((0, 4), (4, 8), (12, 16)) and first.ranks == (0, 2)
    assert first.slots[0].copies == ((0, 8, 0, 8), (8, 12, 12, 16)) and not first.slots[0].whole
    assert second.pieces[0].columns == ((8, 12),)


def test_a_ranks_shards_of_a_table_pack_into_one_piece_and_kernels_group_by_width() -> None:
    plans = kernel_plans(SPEC, PER_RANK)
    # rank 0: items shards 1+2 (8 wide); cats shard 0 (4). rank 1: items 0 (4), cats 1+2 (8),
    # shops whole (12).
    assert [(p.pack, p.width) for p in plans] == [(0, 8), (0, 4), (1, 4), (1, 8), (1, 12)]
    (items0,) = plans[0].pieces
    assert (items0.table, items0.shards, items0.columns) == ("items", (1, 2), ((4, 8), (8, 12)))
    assert [(p.table, p.shards) for p in plans[3].pieces] == [("cats", (1, 2))]
    assert plans[4].pieces[0].columns == ((0, 12),)


def test_tables_of_different_dims_and_dtypes_share_a_kernel_when_widths_match() -> None:
    # items: dim 32 in 4 shards (width 8), int8; cats: dim 16 in 2 (width 8), fp16;
    # pos: dim 8 table-wise on rank 0, fp32. Rank 0 packs items 0+2 (16 wide) and holds pos
    # (8) and cats 0 (8); rank 1 packs items 1+3 (16) and holds cats 1 (8).
    mixed = spec(
        2,
        0,
        [
            ("items", 30, ["a"], [0, 1, 0, 1], 32, "int8"),
            ("cats", 5, ["c"], [0, 1], 16, "fp16"),
            ("pos", 7, ["p"], 0, 8),
        ],
    )
    plans = kernel_plans(mixed, PER_RANK)
    assert [(p.pack, p.width) for p in plans] == [(0, 16), (0, 8), (1, 16), (1, 8)]
    assert [(q.table, q.dtype) for q in plans[1].pieces] == [("cats", "fp16"), ("pos", "fp32")]
    assert plans[0].pieces[0].dtype == "int8"


def test_packed_columns_go_to_their_answer_columns_adjacent_ones_in_one_copy() -> None:
    def piece(columns: tuple[tuple[int, int], ...]) -> Piece:
        return Piece("t", 10, "fp32", tuple(range(len(columns))), columns)

    # shards 1 and 2 of a width-4 table: adjacent in the answer too, one copy
    assert piece(((4, 8), (8, 12))).copies() == ((0, 8, 4, 12),)
    # shards 0 and 2 ([0, 1, 0, 1] on rank 0): two copies
    assert piece(((0, 4), (8, 12))).copies() == ((0, 4, 0, 4), (4, 8, 8, 12))


def test_a_slot_per_feature_of_each_piece() -> None:
    rank0 = kernel_plans(SPEC, PER_RANK)[0]
    # items serves a and b: one slot each, both copying the piece's columns to [4, 12).
    assert [(s.key, s.key_index, s.piece, s.copies, s.whole) for s in rank0.slots] == [
        ("a", 0, 0, ((0, 8, 4, 12),), False),
        ("b", 1, 0, ((0, 8, 4, 12),), False),
    ]


@pytest.mark.parametrize("groups", [PER_RANK, [(0, 1)], [(1,), (0,)]])
def test_every_answer_column_is_written_by_exactly_one_copy(groups) -> None:  # type: ignore[no-untyped-def]
    layout = Layout.of(SPEC)
    written = {k: np.zeros(layout.by_key[k].dim, dtype=int) for k in layout.keys}
    for plan in kernel_plans(SPEC, groups):
        for s in plan.slots:
            for s0, s1, d0, d1 in s.copies:
                assert s1 - s0 == d1 - d0 and s1 <= plan.width
                written[s.key][d0:d1] += 1
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
