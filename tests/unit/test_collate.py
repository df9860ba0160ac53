"""collate, split and slices: the pure ends of the data path."""

from __future__ import annotations

import numpy as np

from serving.engine.collate import collate, slices
from serving.engine.split import split, split_parts

KEYS = ("a", "b", "c")


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def rows_of(b, width: int = 2) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Row i of key k holds [100 k + 2 i, 100 k + 2 i + 1]: its position, readable."""
    return {
        k: np.arange(n * width, dtype=np.float32).reshape(n, width) + 100 * i
        for i, (k, n) in enumerate(zip(KEYS, b.ids_per_key(), strict=True))
    }


def test_collate_is_key_major_and_fills_unnamed_features_with_empty() -> None:
    reqs = [{"a": ids(1, 2), "c": ids(3)}, {"b": ids(4)}, {"a": ids(5)}]
    b = collate(reqs, KEYS)
    assert b.stride == 3 and not b.every_key
    assert b.lengths.tolist() == [2, 0, 1, 0, 1, 0, 1, 0, 0]
    assert b.values.tolist() == [1, 2, 5, 4, 3]
    assert b.lengths.dtype == np.int32 and b.values.dtype == np.int64
    assert b.ids_per_key().tolist() == [3, 1, 1]
    assert b.offsets.tolist() == [[0, 2, 2, 3], [0, 0, 1, 1], [0, 1, 1, 1]]


def test_collate_of_requests_naming_every_key_takes_the_fast_path() -> None:
    reqs = [{"c": ids(9), "a": ids(1, 2), "b": ids()}, {"a": ids(0), "b": ids(7, 7), "c": ids()}]
    b = collate(reqs, KEYS)
    assert b.every_key
    assert b.lengths.tolist() == [2, 1, 0, 2, 1, 0]
    assert b.values.tolist() == [1, 2, 0, 7, 7, 9]
    assert b.values.flags.writeable  # torch.from_numpy takes it without a warning


def test_collate_takes_other_integer_arrays_and_lists_the_slow_way() -> None:
    reqs = [{"a": np.array([1, 2], dtype=np.int32)}, {"a": [3], "b": ids(4)[::1]}]
    b = collate(reqs, KEYS)  # type: ignore[list-item]
    assert b.values.tolist() == [1, 2, 3, 4] and b.values.dtype == np.int64
    strided = np.arange(10, dtype=np.int64)[::3]
    assert collate([{"a": strided, "b": ids(), "c": ids()}], KEYS).values.tolist() == [0, 3, 6, 9]


def test_a_batch_without_ids_collates_to_empty_values() -> None:
    b = collate([{}, {"a": ids()}], KEYS)
    assert b.values.shape == (0,) and b.lengths.tolist() == [0] * 6


def test_split_gives_each_request_its_named_features_in_order() -> None:
    reqs = [{"a": ids(1, 2), "c": ids(3)}, {"b": ids(4), "a": ids()}, {"a": ids(5)}]
    b = collate(reqs, KEYS)
    outputs = rows_of(b)
    got = split(b, outputs, reqs)
    assert [sorted(g) for g in got] == [["a", "c"], ["a", "b"], ["a"]]
    assert got[0]["a"].tolist() == [[0, 1], [2, 3]]
    assert got[1]["a"].shape == (0, 2)
    assert got[2]["a"].tolist() == [[4, 5]]
    assert got[1]["b"].tolist() == [[100, 101]]
    assert got[0]["c"].tolist() == [[200, 201]]
    assert all(np.shares_memory(v, outputs[k]) for g in got for k, v in g.items() if v.size)


def test_split_parts_reads_each_run_of_requests_from_its_own_rows() -> None:
    reqs = [{k: ids(*range(n)) for k in KEYS} for n in (2, 0, 3, 1, 2)]
    b = collate(reqs, KEYS)
    whole = split(b, rows_of(b), reqs)
    # The same rows in two parts: requests [0, 3) and [3, 5), each part's rows its own array.
    cut = b.offsets[:, 3].tolist()
    parts = [
        (3, {k: v[: cut[i]].copy() for i, (k, v) in enumerate(rows_of(b).items())}),
        (5, {k: v[cut[i] :].copy() for i, (k, v) in enumerate(rows_of(b).items())}),
    ]
    got = split_parts(b, parts, reqs)
    assert [sorted(g) for g in got] == [sorted(KEYS)] * 5
    for w, g in zip(whole, got, strict=True):
        assert all(np.array_equal(w[k], g[k]) for k in KEYS)
    assert np.shares_memory(got[4]["b"], parts[1][1]["b"])


def test_slices_cover_every_request_once_balanced_by_ids() -> None:
    reqs = [{"a": ids(*range(n))} for n in [10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]
    parts = slices(reqs, 2)
    assert parts[0].start == 0 and parts[-1].stop == len(reqs)
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))
    assert parts == [slice(0, 3), slice(3, 11)]  # 15 ids + 16 ids (counting one per request)
    assert slices(reqs[:1], 3) == [slice(0, 1)]
    assert slices([], 2) == []
