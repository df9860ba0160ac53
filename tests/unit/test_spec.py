"""Every rule of docs/spec.md, each with the message a user sees."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from serving.config import load_spec, parse_spec, with_engine
from serving.errors import SpecError

BASE: dict[str, Any] = {
    "name": "demo",
    "tables": [
        {"name": "items", "num_embeddings": 100, "embedding_dim": 16, "features": ["a", "b"]},
        {"name": "cats", "num_embeddings": 10, "embedding_dim": 16, "features": ["c"]},
    ],
    "sharding": {
        "world_size": 2,
        "tables": {"items": {"column_wise": [0, 1, 0, 1]}, "cats": {"column_wise": [1, 0, 1, 0]}},
    },
    "seed": 0,
}


def spec_with(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = raw
        *parents, last = path.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as e:
        parse_spec(raw)
    return str(e.value)


def test_the_contract_example_loads_with_its_plan() -> None:
    spec = parse_spec(BASE)
    plan = spec.plan()
    assert [(s.rank, s.start, s.end) for s in plan["items"].shards] == [
        (0, 0, 4),
        (1, 4, 8),
        (0, 8, 12),
        (1, 12, 16),
    ]
    assert spec.features == ["a", "b", "c"]


def test_a_table_left_out_is_column_wise_one_shard_per_rank() -> None:
    raw = spec_with(sharding__tables={})
    plan = parse_spec(raw).plan()["cats"]
    assert plan.kind == "column_wise"
    assert [(s.rank, s.start, s.end) for s in plan.shards] == [(0, 0, 8), (1, 8, 16)]


def test_the_engine_is_local_unless_the_spec_says_distributed() -> None:
    assert parse_spec(BASE).sharding.engine == "local"
    assert parse_spec(spec_with(sharding__engine="distributed")).sharding.engine == "distributed"


def test_table_wise_stands_in_for_column_wise() -> None:
    raw = spec_with(sharding__tables__cats={"table_wise": 1})
    plan = parse_spec(raw).plan()["cats"]
    assert plan.kind == "table_wise" and plan.shards[0].rank == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Bad Name"}, "model name 'Bad Name' must match [a-z0-9_-]{1,64}"),
        ({"name": "x" * 65}, "must match [a-z0-9_-]{1,64}"),
        ({"tables__1__num_embeddings": 0}, "table 'cats': num_embeddings must be >= 1"),
        (
            {"tables__1__dtype": "int4"},
            "table 'cats'.dtype: Input should be 'fp32', 'fp16' or 'int8'",
        ),
        ({"tables__1__features": ["a"]}, "table 'cats': feature 'a' is already served by table"),
        ({"tables__1__name": "items"}, "table 'items': table names must be unique"),
        (
            {"sharding__tables__items": {"column_wise": [0, 2]}},
            "table 'items': rank 2 is outside [0, world_size=2)",
        ),
        (
            {"sharding__tables__items": {"table_wise": -1}},
            "table 'items': rank -1 is outside [0, world_size=2)",
        ),
        # What the distributed engine cannot serve, each named with the engine that can.
        (
            {"sharding__engine": "distributed", "tables__1__dtype": "int8"},
            "table 'cats': dtype int8 needs the local engine; the distributed engine serves "
            "fp32 tables only",
        ),
        (
            {"sharding__engine": "distributed", "tables__1__embedding_dim": 32},
            "table 'cats': embedding_dim 32 differs from 'items' (16); the distributed engine "
            "serves one EmbeddingCollection, whose tables share one dim",
        ),
        (
            {"sharding__engine": "distributed", "sharding__tables__items": {"column_wise": [0, 1]}},
            "the distributed engine needs one column shard width for all column-wise tables "
            "(FBGEMM's training kernel): 'items' has 8, 'cats' has 4",
        ),
        (
            {"tables__0__embedding_dim": 10, "tables__1__embedding_dim": 10},
            "table 'items': embedding_dim 10 does not split into 4 equal column shards",
        ),
        (
            {
                "tables__0__embedding_dim": 8,
                "tables__1__embedding_dim": 8,
            },
            "table 'items': column shard width 2 is not a multiple of 4",
        ),
        ({"sharding__tables__ghost": {"table_wise": 0}}, "table 'ghost' is not in tables"),
        (
            {"sharding__tables__items": {"column_wise": [0, 1, 0, 1], "table_wise": 0}},
            "table 'items': give exactly one of column_wise or table_wise",
        ),
        ({"sharding__tables__items": {"column_wise": []}}, "column_wise needs at least one rank"),
        ({"weights": {}}, "weights: give exactly one of 'safetensors' or 'dcp'"),
        ({"sharding__world_size": 0}, "sharding.world_size: Input should be greater than"),
        ({"tables__0__bogus": 1}, "table 'items'.bogus: Extra inputs are not permitted"),
        ({"tables__1__dtype": "INT8"}, "table 'cats'.dtype: Input should be 'fp32', 'fp16' or"),
        (
            {"sharding__tables__items": {"table_wise": 0}, "tables__0__embedding_dim": 6},
            "table 'items': table-wise shard width (embedding_dim) 6 is not a multiple of 4",
        ),
        (
            {"sharding__engine": "dmp"},
            "sharding.engine: Input should be 'local' or 'distributed'",
        ),
    ],
)
def test_each_rule_names_the_table_and_the_rule(changes: dict[str, Any], message: str) -> None:
    assert message in error_of(spec_with(**changes))


def test_tables_may_differ_in_dim_shard_width_and_dtype_on_the_local_engine() -> None:
    raw = spec_with(
        tables__1__embedding_dim=32,
        tables__1__dtype="int8",
        tables__0__dtype="fp16",
        sharding__tables__items={"column_wise": [0, 1]},
    )
    s = parse_spec(raw)
    assert [(t.embedding_dim, t.dtype) for t in s.tables] == [(16, "fp16"), (32, "int8")]
    assert [s.plan()[t].shards[0].end for t in ("items", "cats")] == [8, 8]
    assert parse_spec(BASE).tables[0].dtype == "fp32"


def test_choosing_the_distributed_engine_later_checks_its_rules() -> None:
    s = parse_spec(spec_with(tables__1__embedding_dim=32))
    with pytest.raises(SpecError, match="model 'demo' on the distributed engine: table 'cats'"):
        with_engine(s, "distributed")
    same = parse_spec(BASE)
    assert with_engine(same, "distributed").sharding.engine == "distributed"


def test_load_spec_reads_yaml_and_makes_weight_paths_absolute(tmp_path: Any) -> None:
    raw = spec_with(weights={"safetensors": "w.safetensors"})
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "model.yaml")
    assert spec.weights is not None
    assert spec.weights.safetensors == (tmp_path / "w.safetensors").resolve()


def test_load_spec_errors_are_one_line(tmp_path: Any) -> None:
    with pytest.raises(SpecError, match="cannot read the model spec"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tables: [")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(tmp_path / "list.yaml")
