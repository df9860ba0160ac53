"""Weight updates on both engines: a delta reaches every shard of a table on every placement,
a reload swaps whole weights, and a rank lost during an update comes back at the latest one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from serving.config import ModelSpec, WeightsSpec
from serving.engine import weights
from serving.engine.base import Delta, TableRows
from serving.engine.distributed.driver import DistributedEngine
from serving.errors import EngineStartError, SpecError
from tests.distributed.plans import PACKS, engine_for, packed, requests, spec
from tests.distributed.test_exactness import MIXED, PLANS
from tests.distributed.test_recovery import until
from tests.reference import assert_exact

pytestmark = pytest.mark.slow


def random_delta(s: ModelSpec, seed: int, share: float = 0.3) -> Delta:
    """New rows for a share of every table's ids, always the first and the last."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in s.tables:
        n = t.num_embeddings
        ids = np.unique(np.r_[0, n - 1, rng.choice(n, size=max(1, int(n * share)))])
        rows = rng.standard_normal((len(ids), t.embedding_dim)).astype(np.float32) * 0.1
        out[t.name] = TableRows(ids.astype(np.int64), rows)
    return out


def applied(tables: dict[str, torch.Tensor], delta: Delta) -> dict[str, torch.Tensor]:
    out = {n: t.clone() for n, t in tables.items()}
    for name, t in delta.items():
        out[name][torch.from_numpy(t.ids)] = torch.from_numpy(t.rows)
    return out


# The distributed engine on the plans it serves; the local engine on every plan, both layouts.
CASES = [("distributed", n, "") for n in PLANS] + [
    ("local", n, p) for n in [*PLANS, *MIXED] for p in PACKS
]


@pytest.mark.parametrize(("kind", "name", "pack"), CASES)
def test_a_delta_touching_every_shard_is_served_exactly_on_every_placement(
    kind: str, name: str, pack: str
) -> None:
    s = {**PLANS, **MIXED}[name]
    s = packed(s, pack) if pack else s
    tables = weights.full_tables(s)
    reqs = requests(s, 120, seed=5)
    with engine_for(kind, s) as engine:
        for seed in (1, 2):  # two deltas in a row, the second over rows of the first
            delta = random_delta(s, seed)
            commit = engine.prepare_update(delta)
            assert_exact(s, tables, reqs, engine.forward(reqs))  # prepared, not yet committed
            commit()
            tables = applied(tables, delta)
            assert_exact(s, tables, reqs, engine.forward(reqs))


@pytest.mark.parametrize(("kind", "pack"), [("distributed", ""), *(("local", p) for p in PACKS)])
def test_a_reload_loads_beside_then_swaps_and_a_bad_one_changes_nothing(
    kind: str, pack: str, tmp_path: Path
) -> None:
    s = PLANS["world2-interleaved-tw"]
    s = packed(s, pack) if pack else s
    old = weights.full_tables(s)
    new = {n: t * 2 + 1 for n, t in old.items()}
    save_file(new, str(tmp_path / "new.safetensors"))
    save_file({n: t[:, :8].contiguous() for n, t in new.items()}, str(tmp_path / "bad.safetensors"))
    reqs = requests(s, 60, seed=6)
    with engine_for(kind, s) as engine:
        for bad in (
            WeightsSpec(safetensors=tmp_path / "absent.safetensors"),
            WeightsSpec(safetensors=tmp_path / "bad.safetensors"),
            WeightsSpec(dcp=tmp_path),
        ):
            with pytest.raises((SpecError, EngineStartError)):
                engine.prepare_reload(bad)
            assert_exact(s, old, reqs, engine.forward(reqs))
        commit = engine.prepare_reload(WeightsSpec(safetensors=tmp_path / "new.safetensors"))
        assert_exact(s, old, reqs, engine.forward(reqs))  # the old weights serve meanwhile
        commit()
        assert_exact(s, new, reqs, engine.forward(reqs))
        delta = random_delta(s, 3)  # a delta after a reload lands on the new weights
        engine.prepare_update(delta)()
        assert_exact(s, applied(new, delta), reqs, engine.forward(reqs))


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_a_rank_lost_during_an_update_comes_back_at_the_latest_version(how: int) -> None:
    s = spec(2, 16, [("items", 60, ["a", "b"], [0, 1, 1, 0]), ("cats", 9, ["c"], 1)], seed=4)
    tables = weights.full_tables(s)
    reqs = requests(s, 30, seed=2)
    first, second = random_delta(s, 1), random_delta(s, 2)
    with DistributedEngine(s, threads_per_rank=1, restart_backoff=0.1, batch_timeout=3.0) as engine:
        engine.prepare_update(first)()
        old = engine.pids
        os.kill(old[1], how)  # dead, or hung: the update gets no reply from it
        engine.prepare_update(second)()  # returns once a new group holds both deltas
        assert engine.ready and engine.restarts == 1 and not set(engine.pids) & set(old)
        latest = applied(applied(tables, first), second)
        assert_exact(s, latest, reqs, engine.forward(reqs))
        # A rank lost later, while idle: the restarted group replays both deltas again.
        os.kill(engine.pids[0], signal.SIGKILL)
        until(lambda: engine.restarts == 2 and engine.ready, 60, "the second restart")
        assert_exact(s, latest, reqs, engine.forward(reqs))
