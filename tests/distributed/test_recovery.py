"""A rank that dies or hangs: the batch fails fast, the group restarts, answers stay exact."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serving.config import WeightsSpec
from serving.engine.distributed.driver import DistributedEngine
from serving.engine.weights import full_tables
from serving.errors import EngineUnavailable
from tests.distributed.plans import requests, spec
from tests.procs import alive, rank_pids
from tests.reference import assert_exact

pytestmark = pytest.mark.slow

SPEC = spec(2, 8, [("items", 60, ["a", "b"], [0, 1]), ("cats", 9, ["c"], [1, 0])], seed=4)
REQS = requests(SPEC, 24, seed=2)


def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until it holds; the seconds it took, or fail naming `what`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_rank_killed_while_idle_is_noticed_and_the_group_restarted() -> None:
    tables = full_tables(SPEC)
    with DistributedEngine(SPEC, threads_per_rank=1, restart_backoff=0.2) as e:
        assert_exact(SPEC, tables, REQS, e.forward(REQS))
        old = e.pids
        os.kill(old[1], signal.SIGKILL)
        until(lambda: not e.ready, 10, "ready turning False after the kill")
        # The restart spawns fresh interpreters (seconds); a request meanwhile is refused at once.
        t0 = time.monotonic()
        with pytest.raises(EngineUnavailable):
            e.forward(REQS)
        assert time.monotonic() - t0 < 1.0
        until(lambda: e.ready, 30, "ready again after the restart")
        new = e.pids
        assert len(new) == 2 and not set(new) & set(old)
        assert not any(alive(p) for p in old), "a rank of the killed group is still running"
        assert e.restarts == 1
        assert_exact(SPEC, tables, REQS, e.forward(REQS))


def test_a_hung_rank_fails_the_batch_within_the_timeout_and_the_group_restarts() -> None:
    tables = full_tables(SPEC)
    with DistributedEngine(SPEC, threads_per_rank=1, batch_timeout=2.0, restart_backoff=0.2) as e:
        assert_exact(SPEC, tables, REQS, e.forward(REQS))
        old = e.pids
        # A stopped rank neither replies nor exits: the other rank waits in the collective.
        os.kill(old[1], signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(EngineUnavailable, match="no reply from ranks"):
                e.forward(REQS)
            took = time.monotonic() - t0
            assert 2.0 <= took < 5.0, f"the batch failed after {took:.1f}s, not about 2s"
            until(lambda: e.ready, 30, "ready again after the restart")
            assert not any(alive(p) for p in old), "a rank of the hung group is still running"
        finally:
            if alive(old[1]):
                os.kill(old[1], signal.SIGKILL)
        assert not set(e.pids) & set(old)
        assert_exact(SPEC, tables, REQS, e.forward(REQS))


def test_failed_restarts_back_off_exponentially_then_recover(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(7)
    tables = {
        t.name: torch.randn(t.num_embeddings, t.embedding_dim, generator=gen) for t in SPEC.tables
    }
    path = tmp_path / "weights.safetensors"
    save_file(tables, str(path))
    good = path.read_bytes()
    s = SPEC.model_copy(update={"weights": WeightsSpec(safetensors=path)})

    def put(data: bytes) -> None:  # a deploy moves a finished copy into place
        tmp = tmp_path / "incoming"
        tmp.write_bytes(data)
        os.replace(tmp, path)

    with DistributedEngine(s, threads_per_rank=1, restart_backoff=0.5, restart_backoff_max=30) as e:
        assert_exact(s, tables, REQS, e.forward(REQS))
        # The file is replaced by a truncated copy, then a rank dies: no restart can load it.
        put(good[: len(good) // 2])
        os.kill(e.pids[0], signal.SIGKILL)
        until(lambda: len(e.restart_attempts) >= 3, 40, "three failed restart attempts")
        assert not e.ready
        put(good)
        until(lambda: e.ready, 40, "ready once the weights are whole again")
        assert_exact(s, tables, REQS, e.forward(REQS))
        attempts = list(e.restart_attempts)
    *failed, last = attempts
    assert last.error is None and e.restarts == 1
    assert len(failed) >= 3 and all("shorter than its header" in (a.error or "") for a in failed)
    # The first try is immediate, then each wait doubles from 0.5 s ...
    assert [a.delay for a in attempts] == [0.0, 0.5, 1.0, 2.0, 4.0][: len(attempts)]
    # ... and is what really separated the attempts.
    for before, after in zip(attempts, attempts[1:], strict=False):
        gap = after.started - before.ended
        assert after.delay - 0.01 <= gap < after.delay + 1.5, (after.delay, gap)


def test_close_during_a_restart_leaves_no_rank_behind() -> None:
    e = DistributedEngine(SPEC, threads_per_rank=1, restart_backoff=0.2)
    e.start()
    try:
        first = e.pids
        os.kill(first[0], signal.SIGKILL)
        # A rank of the next generation exists: the restart is under way, not yet warm.
        until(lambda: bool(set(rank_pids(os.getpid())) - set(first)), 10, "a new rank spawning")
        assert not e.ready
    finally:
        t0 = time.monotonic()
        e.close()
    assert time.monotonic() - t0 < 15
    children = rank_pids(os.getpid())
    assert not children, f"ranks left running after close(): {children}"
    assert not any(alive(p) for p in first)
    with pytest.raises(EngineUnavailable, match="not running"):
        e.forward(REQS)
