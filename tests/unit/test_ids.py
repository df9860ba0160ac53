"""The one id check every protocol makes (serving.fronts.ids), at its boundaries."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serving.errors import InvalidInput
from serving.fronts.ids import checked, not_integers

ROWS = 100


@pytest.mark.parametrize("make", [list, lambda v: np.array(v, np.int64)], ids=["list", "array"])
def test_ids_inside_the_table_come_back_as_int64(make: Any) -> None:
    out = checked(make([0, ROWS - 1, 5, 5]), ROWS, "features.a", "features.a")
    assert out.dtype == np.int64 and out.tolist() == [0, ROWS - 1, 5, 5]
    assert checked(make([]), ROWS, "x", "x").tolist() == []


@pytest.mark.parametrize(
    ("ids", "pos", "shown"),
    [
        ([ROWS], 0, ROWS),
        ([1, -1], 1, -1),
        ([0, ROWS - 1, 2**63], 2, 2**63),
        ([2**64 - 1], 0, 2**64 - 1),
        ([-(2**63)], 0, -(2**63)),
        ([3, 2**70, ROWS], 1, 2**70),  # beyond int64: the first id out of range is named
    ],
)
def test_an_id_outside_the_table_is_named_with_its_label_and_position(
    ids: list[int], pos: int, shown: int
) -> None:
    label = "inputs[0] 'item_id'"
    with pytest.raises(InvalidInput) as e:
        checked(ids, ROWS, label, "inputs[0]")
    assert str(e.value) == f"{label}[{pos}]: id {shown} is outside [0, {ROWS})"
    assert (e.value.field, e.value.position) == ("inputs[0]", pos)


@pytest.mark.parametrize(
    ("ids", "pos", "shown"),
    [([ROWS], 0, ROWS), ([1, -1], 1, -1), ([7, -(2**63)], 1, -(2**63))],
)
def test_arrays_are_checked_the_same_way(ids: list[int], pos: int, shown: int) -> None:
    with pytest.raises(InvalidInput, match=rf"^f\[{pos}\]: id {shown} is outside \[0, {ROWS}\)$"):
        checked(np.array(ids, np.int64), ROWS, "f", "f")
    with pytest.raises(InvalidInput, match=rf"^f\[{pos}\]: id {shown} is outside"):
        checked(
            np.array(ids, np.int64).astype(np.int32 if abs(shown) < 2**31 else np.int64),
            ROWS,
            "f",
            "f",
        )


@pytest.mark.parametrize(
    ("ids", "pos"),
    [
        ([1, 2, 3], None),
        ([True], 0),
        ([1, False], 1),
        ([1, 1.0], 1),
        ([0, "3"], 1),
        ([[1, 2]], 0),
        ([1, {"x": 1}], 1),
        ([None], 0),
        ([], None),
    ],
)
def test_only_exact_integers_are_ids(ids: list[Any], pos: int | None) -> None:
    assert not_integers(ids) == pos
