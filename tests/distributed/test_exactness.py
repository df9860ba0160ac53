"""Both engines against an unsharded EmbeddingCollection with the same weights."""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from serving.config import DTYPES, ModelSpec
from serving.engine import weights
from serving.engine.local.lookup import PARALLEL_MIN_ROWS
from tests.distributed.plans import (
    ENGINES,
    PACKS,
    assert_same,
    engine_for,
    packed,
    requests,
    spec,
)
from tests.reference import assert_exact

pytestmark = pytest.mark.slow

PLANS = {
    # world 1: every shard on the only rank
    "world1": spec(1, 8, [("items", 50, ["a", "b"], [0, 0]), ("cats", 7, ["c"], 0)]),
    # world 2: interleaved, a reversed copy, a table-wise table beside them, shared tables
    "world2-interleaved-tw": spec(
        2,
        16,
        [
            ("items", 1000, ["a", "b"], [0, 1, 0, 1]),
            ("cats", 20, ["c"], [1, 0, 1, 0]),
            ("shops", 30, ["d", "e"], 1),
        ],
    ),
    # [1, 0, 0]: rank 1 holds the first columns, rank 0 two shards
    "world2-100": spec(
        2, 12, [("items", 300, ["a"], [1, 0, 0]), ("cats", 5, ["c", "d"], [0, 1, 1])]
    ),
    # world 3: [2, 0, 1, 1], table-wise on rank 2, and a default plan
    "world3": spec(
        3,
        16,
        [
            ("items", 500, ["a", "b"], [2, 0, 1, 1]),
            ("cats", 9, ["c"], 2),
            ("tags", 40, ["d"], [0, 2, 1, 0]),
        ],
    ),
}

# Tables of different dims, shard widths and stored dtypes: the local engine only (the
# distributed engine refuses them at load, tests/unit/test_spec.py).
MIXED = {
    "dims-interleaved-tw": spec(
        2,
        0,
        [
            ("items", 1000, ["a", "b"], [0, 1, 0, 1], 64),
            ("cats", 20, ["c"], [1, 0], 16),
            ("shops", 30, ["d", "e"], 1, 32),
            ("pos", 9, ["p"], 0, 4),
        ],
    ),
    "dims-dtypes-repeated-ranks": spec(
        3,
        0,
        [
            ("items", 500, ["a", "b"], [2, 0, 0, 1], 128, "int8"),
            ("tags", 40, ["t"], [1, 1, 0], 24, "fp16"),
            ("cats", 9, ["c"], 2, 8, "int8"),
            ("brands", 60, ["d"], [0, 2], 16, "fp16"),
            ("pos", 12, ["p"], [1, 0], 8),
        ],
    ),
}


def run(
    kind: str,
    spec_: ModelSpec,
    batches: list[list[dict[str, np.ndarray]]],
    dispatch: str = "split",
    device: str = "cpu",
) -> None:
    """Each batch through the engine, against the unsharded model; the local engine in both
    layouts (sharding.pack), the first against the model, the second against the first."""
    tables = weights.full_tables(spec_)
    specs = [packed(spec_, p) for p in PACKS] if kind == "local" else [spec_]
    with ExitStack() as stack:
        engines = [
            stack.enter_context(engine_for(kind, s, dispatch=dispatch, device=device))
            for s in specs
        ]
        for reqs in batches:
            first, *others = [e.forward(reqs) for e in engines]
            assert_exact(spec_, tables, reqs, first)
            for answers in others:
                assert_same(first, answers)


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("name", list(PLANS))
def test_sharded_rows_equal_the_unsharded_model(kind: str, name: str) -> None:
    s = PLANS[name]
    # One request, a few, and many in one batch; the same engine serves them in turn.
    batches = [requests(s, 1, seed=1)[:1], requests(s, 5, seed=2), requests(s, 300, seed=3)]
    run(kind, s, batches)


@pytest.mark.parametrize("name", list(MIXED))
def test_local_engine_serves_mixed_dims_and_dtypes_exactly(name: str) -> None:
    # fp16 and int8 tables against TorchRec's QuantEmbeddingCollection of the same weights.
    s = MIXED[name]
    run("local", s, [requests(s, 1, seed=1)[:1], requests(s, 300, seed=3)])
    run("local", s, [requests(s, 6000, seed=8, max_len=12)])  # on the thread pool


@pytest.mark.parametrize("name", ["world2-interleaved-tw", "world3"])
def test_whole_batch_on_rank_zero_is_exact_too(name: str) -> None:
    s = PLANS[name]
    run("distributed", s, [requests(s, 40, seed=4)], "one")


def test_local_engine_threads_large_batches_and_stays_exact() -> None:
    # Enough ids that the kernels run on the thread pool (PARALLEL_MIN_ROWS), in parts of
    # requests; then a small batch through the same engines.
    s = PLANS["world3"]
    big = requests(s, 8192, seed=8, max_len=12)
    assert sum(len(ids) for r in big for ids in r.values()) >= PARALLEL_MIN_ROWS
    run("local", s, [big, requests(s, 3, seed=9)])


@st.composite
def random_plans(draw: st.DrawFn, mixed: bool = False) -> ModelSpec:
    """Plans of one dim and fp32 tables (what both engines serve); `mixed`: each table its own
    dim, shard count and stored dtype (the local engine)."""
    world = draw(st.integers(1, 3))
    shards = draw(st.integers(1, 4))
    width = draw(st.sampled_from([4, 8]))
    tables = []
    for i in range(draw(st.integers(1, 3))):
        if mixed:
            shards = draw(st.integers(1, 4))
            width = draw(st.sampled_from([4, 8, 12, 32]))
        rows = draw(st.integers(1, 60))
        features = [f"t{i}f{j}" for j in range(draw(st.integers(1, 2)))]
        if draw(st.booleans()):
            where: object = draw(
                st.lists(st.integers(0, world - 1), min_size=shards, max_size=shards)
            )
        else:
            where = draw(st.integers(0, world - 1))
        dtype = draw(st.sampled_from(DTYPES)) if mixed else "fp32"
        tables.append((f"table{i}", rows, features, where, shards * width, dtype))
    return spec(world, 0, tables, seed=draw(st.integers(0, 1000)))


# Each example starts a rank group (seconds), so no shrinking: a failure prints its plan.
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(plan=random_plans(), seed=st.integers(0, 2**16), dispatch=st.sampled_from(["split", "one"]))
def test_property_any_valid_plan_and_batch_is_exact(
    plan: ModelSpec, seed: int, dispatch: str
) -> None:
    run("distributed", plan, [requests(plan, n, seed=seed + n) for n in (1, 7, 60)], dispatch)


# The local engine starts in milliseconds, so it can take many more plans.
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=random_plans(mixed=True), seed=st.integers(0, 2**16))
def test_property_local_engine_any_plan_and_batch_is_exact(plan: ModelSpec, seed: int) -> None:
    run("local", plan, [requests(plan, n, seed=seed + n) for n in (1, 7, 60)])


NO_CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA is absent: the GPU paths need a GPU"
)


@NO_CUDA
def test_cuda_distributed_ranks_are_exact() -> None:
    # NCCL wants one GPU per rank: as many ranks as there are GPUs, up to 2.
    world = min(2, torch.cuda.device_count())
    s = spec(
        world,
        16,
        [("items", 1000, ["a", "b"], [i % world for i in range(4)]), ("cats", 20, ["c"], 0)],
    )
    run("distributed", s, [requests(s, 200, seed=6)], device="cuda")


@NO_CUDA
@pytest.mark.parametrize("name", [*PLANS, *MIXED])
def test_cuda_local_engine_is_exact_with_several_ranks_per_gpu(name: str) -> None:
    # World sizes above the GPU count put several ranks on one device (rank r on r % gpus).
    s = {**PLANS, **MIXED}[name]
    batches = [requests(s, 1, seed=1)[:1], requests(s, 300, seed=3), requests(s, 5000, seed=4)]
    run("local", s, batches, device="cuda")
