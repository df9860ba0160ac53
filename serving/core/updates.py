"""Weight updates (docs/updates.md): a row delta or a full reload, read and checked before
anything changes. numpy only (and the stored dtypes' rule of what they hold): the engines
apply what this module accepts.

A delta is a safetensors file holding, per table to change, `<table>.ids` (int64 [k], unique,
in range) and `<table>.rows` (float32 [k, dim], finite: a NaN would reach every client). A
reload names new weights on the server: `{"safetensors": PATH}` or `{"dcp": PATH}`, which must
resolve (symlinks and '..' followed first) to a path under one of the folders the operator
allows (--reload-roots); a DCP folder's entries too, since its metadata is unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors

from serving.config import ModelSpec, WeightsSpec, unstorable, why_unstorable
from serving.engine.base import Delta, TableRows
from serving.errors import BadUpdate


def rows_in(delta: Delta) -> int:
    return sum(len(t.ids) for t in delta.values())


def parse_delta(body: bytes, spec: ModelSpec) -> Delta:
    """A safetensors delta, every rule checked; BadUpdate names the tensor and the rule."""
    try:
        tensors = load_safetensors(body)
    except (SafetensorError, ValueError, OSError, KeyError) as e:
        # KeyError: a dtype safetensors knows and numpy does not (bf16, fp8)
        raise BadUpdate(f"delta: not a readable safetensors file of numpy dtypes ({e!r})") from None
    if not tensors:
        raise BadUpdate("delta: the file holds no tensors; give <table>.ids and <table>.rows")
    tables = {t.name: t for t in spec.tables}
    named: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        table, _, part = key.rpartition(".")
        if part not in ("ids", "rows") or not table:
            raise BadUpdate(f"delta: tensor '{key}' is not named '<table>.ids' or '<table>.rows'")
        if table not in tables:
            known = ", ".join(sorted(tables))
            raise BadUpdate(f"delta: table '{table}' is not in model '{spec.name}' ({known})")
        named.setdefault(table, {})[part] = value
    delta: Delta = {}
    for name in sorted(named, key=list(tables).index):
        parts, table = named[name], tables[name]
        for part in ("ids", "rows"):
            if part not in parts:
                raise BadUpdate(f"delta: table '{name}' has no '{name}.{part}'")
        ids, rows = parts["ids"], parts["rows"]
        if ids.dtype != np.int64 or ids.ndim != 1:
            raise BadUpdate(
                f"delta: '{name}.ids' must be int64 of shape [k], not {ids.dtype} {list(ids.shape)}"
            )
        want = [len(ids), table.embedding_dim]
        if rows.dtype != np.float32 or list(rows.shape) != want:
            raise BadUpdate(
                f"delta: '{name}.rows' must be float32 {want} (a row of embedding_dim "
                f"{table.embedding_dim} per id), not {rows.dtype} {list(rows.shape)}"
            )
        bad = np.flatnonzero((ids < 0) | (ids >= table.num_embeddings))
        if len(bad):
            raise BadUpdate(
                f"delta: '{name}.ids' position {bad[0]}: id {ids[bad[0]]} is outside "
                f"[0, {table.num_embeddings})"
            )
        unique, counts = np.unique(ids, return_counts=True)
        if len(unique) != len(ids):
            repeated = unique[counts > 1][0]
            raise BadUpdate(f"delta: '{name}.ids' repeats id {repeated}; ids must be unique")
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise BadUpdate(f"delta: '{name}.rows' row {row} (id {ids[row]}) holds NaN or inf")
        beyond = unstorable(rows, table.dtype)
        if beyond is not None:
            why = why_unstorable(table.dtype)
            raise BadUpdate(f"delta: '{name}.rows' row {beyond} (id {ids[beyond]}) {why}")
        delta[name] = TableRows(ids, rows)
    if not rows_in(delta):
        raise BadUpdate("delta: no rows; give at least one id and its row")
    return delta


def parse_reload(body: bytes, roots: Sequence[Path]) -> WeightsSpec:
    """`{"safetensors": PATH}` or `{"dcp": PATH}`: a path on the server under one of `roots`
    (resolved folders)."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadUpdate(f"reload: the body is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or len(doc) != 1 or next(iter(doc)) not in ("safetensors", "dcp"):
        raise BadUpdate('reload: give exactly one of {"safetensors": PATH} or {"dcp": PATH}')
    kind, path = next(iter(doc.items()))
    if not isinstance(path, str) or not path:
        raise BadUpdate(f"reload: '{kind}' must be a path on the server, a non-empty string")
    try:
        if "\x00" in path:
            raise ValueError("a NUL character")
        resolved = Path(path).resolve()
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise BadUpdate(f"reload: '{kind}' path {path!r} cannot be resolved: {e}") from None
    _check_under(kind, path, resolved, roots)
    if kind == "dcp" and resolved.is_dir():
        for entry in sorted(resolved.iterdir()):
            _check_under(kind, str(entry), entry.resolve(), roots)
    return WeightsSpec(**{kind: resolved})


def _check_under(kind: str, given: str, resolved: Path, roots: Sequence[Path]) -> None:
    if any(resolved.is_relative_to(root) for root in roots):
        return
    allowed = ", ".join(str(r) for r in roots) or "none"
    raise BadUpdate(
        f"reload: '{kind}' path {given!r} resolves to {resolved}, outside the folders reloads "
        f"may read ({allowed}); the operator names them with --reload-roots"
    )
