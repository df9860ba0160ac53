"""The one id check every protocol makes: a feature's ids as int64, each in [0, rows).

Ids are checked here once per request, before they are queued; nothing after (the batcher,
collate, the engines) checks them again, and no id outside its table reaches a lookup. The
caller names the ids in its protocol's words (`label`, e.g. `features.item_id` or
`inputs[0] 'item_id'`): the message is `<label>[<position>]: id <id> is outside [0, <rows>)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.errors import InvalidInput

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def checked(ids: list[Any] | np.ndarray, rows: int, label: str, field: str) -> np.ndarray:
    """`ids` (decoded integers, or an integer array) as int64, every one in [0, rows).

    A list must hold only `int`s (no bool, no float: `not_integers` finds the first other
    element for the protocol's own message); its range is checked with the builtins min and
    max, which for the tens of ids a sequence usually holds cost less than one numpy call."""
    if isinstance(ids, np.ndarray):
        arr = ids.astype(np.int64, copy=False)
        # One unsigned compare: a negative id reads as a huge one, so it is out of range too.
        if arr.size and int(arr.view(np.uint64).max()) >= rows:
            _outside(arr.tolist(), rows, label, field)
        return arr
    if ids and (min(ids) < 0 or max(ids) >= rows):
        _outside(ids, rows, label, field)
    return np.array(ids, dtype=np.int64)


def not_integers(ids: list[Any]) -> int | None:
    """The position of the first element of `ids` that is not exactly an `int`, or None."""
    if set(map(type, ids)) <= {int}:  # in C; bool and float are other types
        return None
    return next(i for i, x in enumerate(ids) if type(x) is not int)


def _outside(ids: list[int], rows: int, label: str, field: str) -> None:
    pos = next(i for i, x in enumerate(ids) if not 0 <= x < rows)
    raise InvalidInput(
        f"{label}[{pos}]: id {ids[pos]} is outside [0, {rows})", field=field, position=pos
    )
