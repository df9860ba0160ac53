"""The model spec (docs/spec.md) as typed models, with every rule checked at load."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.errors import SpecError

NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
# FBGEMM's fused sequence kernel works on shard widths that are a multiple of this.
WIDTH_MULTIPLE = 4
# local: one process drives every rank's kernels, no collectives (serving/engine/local);
# distributed: TorchRec DistributedModelParallel rank processes (serving/engine/distributed)
EngineKind = Literal["local", "distributed"]
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)
# How a table's rows are stored (answers are float32 whatever it is): int8 is FBGEMM's 8-bit
# row-wise format, a scale and a bias per row.
Dtype = Literal["fp32", "fp16", "int8"]
DTYPES: tuple[str, ...] = get_args(Dtype)
# The local engine's layout: a device's shards of a table packed into one table ("device": on
# a CPU, or one GPU, every table whole, read once per id with no stitch), or each rank's apart
# ("rank": the stitch of column shards, as ranks on separate devices need).
Pack = Literal["device", "rank"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableSpec(_Strict):
    name: str = Field(min_length=1)
    num_embeddings: int
    embedding_dim: int
    features: list[str] = Field(min_length=1)
    dtype: Dtype = "fp32"


class TablePlacement(_Strict):
    column_wise: list[int] | None = None
    table_wise: int | None = None


class ShardingSpec(_Strict):
    world_size: int = Field(ge=1)
    tables: dict[str, TablePlacement] = Field(default_factory=dict)
    engine: EngineKind = "local"
    pack: Pack = "device"  # the local engine's; the distributed engine's ranks hold their own


class WeightsSpec(_Strict):
    safetensors: Path | None = None
    dcp: Path | None = None


@dataclass(frozen=True)
class Shard:
    rank: int
    start: int  # first column
    end: int  # one past the last column


@dataclass(frozen=True)
class TablePlan:
    kind: str  # "column_wise" or "table_wise"
    shards: tuple[Shard, ...]


class ModelSpec(_Strict):
    name: str
    tables: list[TableSpec] = Field(min_length=1)
    sharding: ShardingSpec
    weights: WeightsSpec | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _check_rules(self) -> ModelSpec:
        if not NAME_RE.match(self.name):
            raise ValueError(f"model name {self.name!r} must match [a-z0-9_-]{{1,64}}")
        _check_tables(self)
        _check_plan(self)
        if self.sharding.engine == "distributed":
            check_distributed(self)
        if self.weights and (self.weights.safetensors is None) == (self.weights.dcp is None):
            raise ValueError("weights: give exactly one of 'safetensors' or 'dcp'")
        return self

    @property
    def features(self) -> list[str]:
        """Every feature, in spec order: the key order of every KeyedJaggedTensor."""
        return [f for t in self.tables for f in t.features]

    def table_of(self) -> dict[str, TableSpec]:
        return {f: t for t in self.tables for f in t.features}

    def plan(self) -> dict[str, TablePlan]:
        return {t.name: table_plan(self, t) for t in self.tables}


def table_plan(spec: ModelSpec, table: TableSpec) -> TablePlan:
    placement = spec.sharding.tables.get(table.name)
    dim = table.embedding_dim
    if placement is not None and placement.table_wise is not None:
        return TablePlan("table_wise", (Shard(placement.table_wise, 0, dim),))
    ranks = placement.column_wise if placement else None
    ranks = ranks if ranks is not None else list(range(spec.sharding.world_size))
    width = dim // len(ranks) if ranks else 0
    return TablePlan(
        "column_wise", tuple(Shard(r, k * width, (k + 1) * width) for k, r in enumerate(ranks))
    )


def _check_tables(spec: ModelSpec) -> None:
    seen_tables: set[str] = set()
    seen_features: dict[str, str] = {}
    for t in spec.tables:
        if t.name in seen_tables:
            raise ValueError(f"table '{t.name}': table names must be unique")
        seen_tables.add(t.name)
        if t.num_embeddings < 1:
            raise ValueError(f"table '{t.name}': num_embeddings must be >= 1")
        if t.embedding_dim < 1:
            raise ValueError(f"table '{t.name}': embedding_dim must be >= 1")
        for f in t.features:
            if f in seen_features:
                raise ValueError(
                    f"table '{t.name}': feature '{f}' is already served by table "
                    f"'{seen_features[f]}'; feature names must be unique"
                )
            seen_features[f] = t.name


def _check_plan(spec: ModelSpec) -> None:
    world = spec.sharding.world_size
    names = {t.name for t in spec.tables}
    for name in spec.sharding.tables:
        if name not in names:
            raise ValueError(f"sharding.tables: table '{name}' is not in tables")
    for t in spec.tables:
        placement = spec.sharding.tables.get(t.name)
        if placement is not None:
            both = placement.column_wise is not None and placement.table_wise is not None
            if both or (placement.column_wise is None and placement.table_wise is None):
                raise ValueError(f"table '{t.name}': give exactly one of column_wise or table_wise")
            if placement.column_wise is not None and not placement.column_wise:
                raise ValueError(f"table '{t.name}': column_wise needs at least one rank")
            ranks = placement.column_wise or [placement.table_wise or 0]
            for r in ranks:
                if not 0 <= r < world:
                    raise ValueError(
                        f"table '{t.name}': rank {r} is outside [0, world_size={world})"
                    )
        plan = table_plan(spec, t)
        if plan.kind != "column_wise":
            # One shard of the whole dim, in the same kernels as column shards (an odd int8
            # dim failed deep in FBGEMM's quantization).
            if t.embedding_dim % WIDTH_MULTIPLE:
                raise ValueError(
                    f"table '{t.name}': table-wise shard width (embedding_dim) "
                    f"{t.embedding_dim} is not a multiple of {WIDTH_MULTIPLE} (FBGEMM's fused "
                    "sequence kernel)"
                )
            continue
        n = len(plan.shards)
        if t.embedding_dim % n:
            raise ValueError(
                f"table '{t.name}': embedding_dim {t.embedding_dim} does not split into "
                f"{n} equal column shards"
            )
        width = t.embedding_dim // n
        if width % WIDTH_MULTIPLE:
            raise ValueError(
                f"table '{t.name}': column shard width {width} is not a multiple of "
                f"{WIDTH_MULTIPLE} (FBGEMM's fused sequence kernel)"
            )


def check_distributed(spec: ModelSpec) -> None:
    """What the distributed engine cannot serve. Its ranks hold one TorchRec
    EmbeddingCollection, whose tables share one dim, sharded by the training TBE, whose
    sequence kernel takes one column-shard width and float32 weights; the local engine
    serves all of these."""
    first = spec.tables[0]
    for t in spec.tables:
        if t.dtype != "fp32":
            raise ValueError(
                f"table '{t.name}': dtype {t.dtype} needs the local engine; the distributed "
                "engine serves fp32 tables only"
            )
        if t.embedding_dim != first.embedding_dim:
            raise ValueError(
                f"table '{t.name}': embedding_dim {t.embedding_dim} differs from "
                f"'{first.name}' ({first.embedding_dim}); the distributed engine serves one "
                "EmbeddingCollection, whose tables share one dim (the local engine does not "
                "need this)"
            )
    widths: dict[int, str] = {}
    for t in spec.tables:
        plan = table_plan(spec, t)
        if plan.kind == "column_wise":
            widths.setdefault(plan.shards[0].end - plan.shards[0].start, t.name)
    if len(widths) > 1:
        found = ", ".join(f"'{name}' has {w}" for w, name in widths.items())
        raise ValueError(
            "the distributed engine needs one column shard width for all column-wise tables "
            f"(FBGEMM's training kernel): {found}; the local engine does not need this"
        )


def load_spec(path: str | Path) -> ModelSpec:
    """Read and check model.yaml (or the model.yaml of a folder, as `seqserve demo-model`
    writes); weight paths become absolute (relative to the file)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.yaml").is_file():
            raise SpecError(f"{path}: a folder without model.yaml; give the spec or its folder")
        path = path / "model.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"{path}: cannot read the model spec: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the model spec must be a mapping")
    spec = parse_spec(raw, source=str(path))
    return resolve_weights(spec, path.parent)


def parse_spec(raw: dict[str, Any], source: str = "model spec") -> ModelSpec:
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{source}: {_one_line(e, raw)}") from None


def with_engine(spec: ModelSpec, kind: EngineKind) -> ModelSpec:
    """The spec served by another engine than it names, checked against that engine's rules."""
    if kind == spec.sharding.engine:
        return spec
    raw = spec.model_dump(exclude_none=True)
    raw["sharding"]["engine"] = kind
    return parse_spec(raw, source=f"model '{spec.name}' on the {kind} engine")


def resolve_weights(spec: ModelSpec, base: Path) -> ModelSpec:
    w = spec.weights
    if w is None:
        return spec
    fixed = {k: (base / v).resolve() for k, v in w.model_dump().items() if v is not None}
    return spec.model_copy(update={"weights": WeightsSpec(**fixed)})


def _one_line(e: ValidationError, raw: Any) -> str:
    parts = []
    for err in e.errors():
        where = [str(x) for x in err["loc"]]
        if len(where) >= 2 and where[0] == "tables" and where[1].isdigit():
            where[:2] = [_table_named(raw, int(where[1]))]
        loc = ".".join(where)
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _table_named(raw: Any, index: int) -> str:
    """`table 'items'` for tables[index] when it has a name, else `tables.index`."""
    try:
        name = raw["tables"][index]["name"]
    except (KeyError, IndexError, TypeError):
        name = None
    return f"table '{name}'" if isinstance(name, str) and name else f"tables.{index}"


# -- what each stored dtype holds (also checked on weight updates) --------------------------

HALF_MAX = float(np.finfo(np.float16).max)  # 65504: fp16 rows and int8's scale and bias are fp16


def unstorable(rows: np.ndarray, dtype: Dtype) -> int | None:
    """The first of float32 `rows` [n, dim] that `dtype` cannot hold, or None. fp16 and int8
    keep fp16 values (the rows, or each row's scale and bias): a value beyond +-65504 would read
    back as inf (fp16) or turn the whole row to NaN (int8), and a NaN would be lost in int8's
    scale; so NaN, inf and such values are refused. fp32 holds any row."""
    if dtype == "fp32":
        return None
    fits = (np.abs(rows) <= HALF_MAX).all(axis=1)  # NaN compares False: refused too
    return None if fits.all() else int(np.flatnonzero(~fits)[0])


def why_unstorable(dtype: Dtype) -> str:
    if dtype == "int8":
        return (
            "holds NaN, inf or a value beyond +-65504: int8 rows keep a per-row scale and bias "
            "in fp16, which cannot hold it"
        )
    return f"holds NaN, inf or a value beyond +-65504, which {dtype} storage cannot hold"
