"""Weight updates read and checked before anything changes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from serving.core.updates import parse_delta, parse_reload, rows_in
from serving.errors import BadUpdate
from tests.distributed.plans import spec

SPEC = spec(2, 0, [("items", 100, ["a"], [0, 1], 8), ("cats", 10, ["c"], 1, 4, "int8")])


def delta(**tensors: Any) -> bytes:
    return save(tensors)


def ids(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def rows(k: int, dim: int) -> np.ndarray:
    return np.arange(k * dim, dtype=np.float32).reshape(k, dim)


def with_nan(r: np.ndarray, row: int) -> np.ndarray:
    r[row, -1] = np.nan
    return r


def bf16_delta() -> bytes:
    """items.rows in bfloat16: a dtype safetensors knows and numpy does not."""
    header = {
        "items.ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]},
        "items.rows": {"dtype": "BF16", "shape": [1, 8], "data_offsets": [8, 24]},
    }
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + bytes(24)


def test_a_delta_of_two_tables_is_read_in_spec_order() -> None:
    d = parse_delta(
        delta(
            **{"cats.ids": ids(9), "cats.rows": rows(1, 4)},
            **{"items.rows": rows(3, 8), "items.ids": ids(0, 99, 5)},
        ),
        SPEC,
    )
    assert list(d) == ["items", "cats"] and rows_in(d) == 4
    assert d["items"].ids.tolist() == [0, 99, 5] and d["items"].rows.shape == (3, 8)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not safetensors", "delta: not a readable safetensors file"),
        (delta(**{"items.ids": ids(1), "items.rows": rows(1, 8)})[:-7], "not a readable"),
        (delta(), "delta: the file holds no tensors"),
        (
            delta(**{"ghost.ids": ids(1), "ghost.rows": rows(1, 8)}),
            "delta: table 'ghost' is not in model 't' (cats, items)",
        ),
        (delta(items=rows(1, 8)), "tensor 'items' is not named '<table>.ids' or '<table>.rows'"),
        (delta(**{"items.ids": ids(1)}), "delta: table 'items' has no 'items.rows'"),
        (
            delta(**{"items.ids": ids(1).astype(np.int32), "items.rows": rows(1, 8)}),
            "delta: 'items.ids' must be int64 of shape [k], not int32 [1]",
        ),
        (
            delta(**{"items.ids": ids(1, 2), "items.rows": rows(2, 4)}),
            "delta: 'items.rows' must be float32 [2, 8] (a row of embedding_dim 8 per id), "
            "not float32 [2, 4]",
        ),
        (
            delta(**{"items.ids": ids(1), "items.rows": rows(1, 8).astype(np.float64)}),
            "must be float32 [1, 8]",
        ),
        (
            delta(**{"items.ids": ids(4, 100), "items.rows": rows(2, 8)}),
            "delta: 'items.ids' position 1: id 100 is outside [0, 100)",
        ),
        (
            delta(**{"cats.ids": ids(-1), "cats.rows": rows(1, 4)}),
            "delta: 'cats.ids' position 0: id -1 is outside [0, 10)",
        ),
        (
            delta(**{"items.ids": ids(3, 4, 3), "items.rows": rows(3, 8)}),
            "delta: 'items.ids' repeats id 3; ids must be unique",
        ),
        (
            delta(**{"items.ids": ids(3, 5), "items.rows": with_nan(rows(2, 8), 1)}),
            "delta: 'items.rows' row 1 (id 5) holds NaN or inf",
        ),
        (delta(**{"items.ids": ids(), "items.rows": rows(0, 8)}), "delta: no rows"),
        (bf16_delta(), "delta: not a readable safetensors file of numpy dtypes"),
    ],
)
def test_every_bad_delta_is_refused_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(BadUpdate) as e:
        parse_delta(body, SPEC)
    assert message in str(e.value)


def test_a_reload_names_one_path() -> None:
    w = parse_reload(b'{"safetensors": "/srv/w.safetensors"}', [Path("/srv")])
    assert str(w.safetensors) == "/srv/w.safetensors" and w.dcp is None
    assert parse_reload(b'{"dcp": "ckpt"}', [Path.cwd()]).dcp is not None
    for body, message in [
        (b"{", "reload: the body is not valid JSON"),
        (b'{"safetensors": "a", "dcp": "b"}', 'give exactly one of {"safetensors": PATH}'),
        (b'{"pickle": "a"}', "give exactly one of"),
        (b'{"dcp": 3}', "reload: 'dcp' must be a path on the server"),
        (b'{"dcp": "a\\u0000b"}', "reload: 'dcp' path 'a\\x00b' cannot be resolved"),
    ]:
        with pytest.raises(BadUpdate, match=re.escape(message)):
            parse_reload(body, [Path("/srv")])


def test_a_reload_reads_only_under_its_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ckpt").mkdir(parents=True)
    (root / "ok.safetensors").write_bytes(b"")
    (root / "out").symlink_to("/etc/passwd")
    assert parse_reload(b'{"safetensors": "%s/ok.safetensors"}' % bytes(root), [root])
    for body in (
        b'{"safetensors": "/etc/passwd"}',
        b'{"dcp": "/proc/self"}',
        b'{"safetensors": "%s/../root2/x"}' % bytes(root),
        b'{"safetensors": "%s/out"}' % bytes(root),
    ):
        with pytest.raises(BadUpdate, match="outside the folders reloads may read"):
            parse_reload(body, [root])
    with pytest.raises(BadUpdate, match=r"outside the folders reloads may read \(none\)"):
        parse_reload(b'{"safetensors": "%s/ok.safetensors"}' % bytes(root), [])
    # a DCP folder's entries too: its metadata is unpickled
    (root / "ckpt" / ".metadata").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadUpdate, match="ckpt/.metadata' resolves to"):
        parse_reload(b'{"dcp": "%s/ckpt"}' % bytes(root), [root])


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_fp16_and_int8_tables_refuse_rows_beyond_halfs_range(dtype: str) -> None:
    half = spec(1, 0, [("h", 10, ["h"], 0, 4, dtype)])
    edge = np.full((1, 4), -65504, np.float32)
    assert rows_in(parse_delta(delta(**{"h.ids": ids(1), "h.rows": edge}), half)) == 1
    big = rows(2, 4)
    big[1, 2] = 7e4
    with pytest.raises(BadUpdate, match=re.escape("row 1 (id 2) holds NaN, inf or a value")):
        parse_delta(delta(**{"h.ids": ids(1, 2), "h.rows": big}), half)
    fp32 = spec(1, 0, [("h", 10, ["h"], 0, 4)])
    assert rows_in(parse_delta(delta(**{"h.ids": ids(1, 2), "h.rows": big}), fp32)) == 2


def test_a_reload_path_in_a_symlink_loop_is_a_bad_update(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    body = json.dumps({"safetensors": str(tmp_path / "a")}).encode()
    with pytest.raises(BadUpdate, match="cannot be resolved"):
        parse_reload(body, [tmp_path])
