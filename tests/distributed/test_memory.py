"""A rank's memory grows with its own shards, not with whole tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serving.config import WeightsSpec
from serving.engine.distributed.driver import DistributedEngine
from tests.distributed.plans import spec

pytestmark = pytest.mark.slow

ROWS, DIM = 1_000_000, 64  # 256 MiB of float32; each of 2 ranks holds half the columns


def peak_rss_bytes(rows: int, path: Path) -> list[int]:
    s = spec(2, DIM, [("items", rows, ["a"], [0, 1, 0, 1])])
    save_file({"items": torch.zeros(rows, DIM)}, str(path))
    s = s.model_copy(update={"weights": WeightsSpec(safetensors=path)})
    with DistributedEngine(s, threads_per_rank=1) as engine:
        return [int(i["peak_rss_kib"]) * 1024 for i in engine.rank_info]  # type: ignore[call-overload]


def test_each_rank_reads_only_its_column_slices(tmp_path: Path) -> None:
    table = ROWS * DIM * 4
    small = peak_rss_bytes(10, tmp_path / "small.safetensors")
    big = peak_rss_bytes(ROWS, tmp_path / "big.safetensors")
    for r, (a, b) in enumerate(zip(small, big, strict=True)):
        grown = b - a
        # Its shards are table/2; reading whole tables would cost at least a full table more.
        assert grown < 0.75 * table, (
            f"rank {r} grew {grown / 2**20:.0f} MiB for a {table / 2**20:.0f} MiB table"
        )
        assert grown > 0.4 * table, (
            f"rank {r} grew only {grown / 2**20:.0f} MiB: shards not loaded?"
        )
