"""Cases the property test found, kept as fixed examples."""

from __future__ import annotations

import numpy as np
import pytest

from serving.engine import weights
from serving.engine.distributed.driver import DistributedEngine
from tests.distributed.plans import spec
from tests.reference import assert_exact

pytestmark = pytest.mark.slow


def test_a_rank_whose_slice_has_no_ids_returns_empty_rows() -> None:
    # Split dispatch gives rank 1 the second request, which names no ids at all.
    s = spec(2, 8, [("items", 10, ["a"], [0, 1])])
    reqs = [{"a": np.array([1, 2, 3])}, {"a": np.zeros(0, dtype=np.int64)}]
    with DistributedEngine(s, threads_per_rank=1) as engine:
        assert_exact(s, weights.full_tables(s), reqs, engine.forward(reqs))
