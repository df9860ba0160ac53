"""collate, split and slices: the pure ends of the data path."""

from __future__ import annotations

import numpy as np
import pytest

from serving.engine.collate import collate, slices
from serving.engine.split import split
from serving.errors import InvalidInput

KEYS = ("a", "b", "c")
ROWS = {"a": 100, "b": 100, "c": 10}


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def test_collate_is_key_major_and_fills_unnamed_features_with_empty() -> None:
    reqs = [{"a": ids(1, 2), "c": ids(3)}, {"b": ids(4)}, {"a": ids(5)}]
    b = collate(reqs, KEYS, ROWS)
    assert b.stride == 3
    assert b.lengths.tolist() == [2, 0, 1, 0, 1, 0, 1, 0, 0]
    assert b.values.tolist() == [1, 2, 5, 4, 3]
    assert b.lengths.dtype == np.int32 and b.values.dtype == np.int64
    assert b.ids_per_key().tolist() == [3, 1, 1]


def test_split_gives_each_request_its_named_features_in_order() -> None:
    reqs = [{"a": ids(1, 2), "c": ids(3)}, {"b": ids(4), "a": ids()}, {"a": ids(5)}]
    b = collate(reqs, KEYS, ROWS)
    outputs = {
        k: np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 100 * i
        for i, (k, n) in enumerate(zip(KEYS, b.ids_per_key(), strict=True))
    }
    got = split(b, outputs, reqs)
    assert [sorted(g) for g in got] == [["a", "c"], ["a", "b"], ["a"]]
    assert got[0]["a"].tolist() == [[0, 1], [2, 3]]
    assert got[1]["a"].shape == (0, 2)
    assert got[2]["a"].tolist() == [[4, 5]]
    assert got[1]["b"].tolist() == [[100, 101]]
    assert got[0]["c"].tolist() == [[200, 201]]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"a": ids(0, 99, 100)}, "features.a[2]: id 100 is outside [0, 100)"),
        ({"c": ids(-1)}, "features.c[0]: id -1 is outside [0, 10)"),
    ],
)
def test_out_of_range_ids_are_refused_with_field_and_position(bad, message) -> None:
    with pytest.raises(InvalidInput) as e:
        collate([bad], KEYS, ROWS)
    assert str(e.value) == message


def test_out_of_range_in_a_batch_names_the_request() -> None:
    reqs = [{"a": ids(1)}, {"c": ids(2, 3)}, {"c": ids(4, 10)}]
    with pytest.raises(InvalidInput) as e:
        collate(reqs, KEYS, ROWS)
    assert str(e.value) == "features.c[1]: id 10 is outside [0, 10) (request 2)"
    assert e.value.field == "features.c" and e.value.position == 1


def test_unknown_feature_is_refused() -> None:
    with pytest.raises(InvalidInput, match="request 0: unknown feature 'zz'"):
        collate([{"zz": ids(1)}], KEYS, ROWS)


def test_slices_cover_every_request_once_balanced_by_ids() -> None:
    reqs = [{"a": ids(*range(n))} for n in [10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]
    parts = slices(reqs, 2)
    assert parts[0].start == 0 and parts[-1].stop == len(reqs)
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))
    assert parts == [slice(0, 3), slice(3, 11)]  # 15 ids + 16 ids (counting one per request)
    assert slices(reqs[:1], 3) == [slice(0, 1)]
    assert slices([], 2) == []
