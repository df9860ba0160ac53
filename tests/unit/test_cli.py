"""The seqserve command: demo-model, --help, bad flags and bad specs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from serving.commands.cli import main
from serving.config import load_spec


def seqserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.commands.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_model_writes_a_loadable_model(tmp_path: Path) -> None:
    assert main(["demo-model", str(tmp_path / "m")]) == 0
    spec = load_spec(tmp_path / "m" / "model.yaml")
    assert spec.name == "demo" and spec.sharding.world_size == 2
    assert (tmp_path / "m" / "weights.safetensors").stat().st_size > 100_000 * 64 * 4


def test_demo_weights_are_readable_like_the_spec(tmp_path: Path) -> None:
    # safetensors writes 0600; a container user other than the writer must still read them.
    old = os.umask(0o022)
    try:
        assert main(["demo-model", str(tmp_path / "m")]) == 0
    finally:
        os.umask(old)
    for name in ("model.yaml", "weights.safetensors"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644, name


def test_help_and_a_bad_flag() -> None:
    assert "demo-model" in seqserve("--help").stdout
    bad = seqserve("demo-model", "x", "--no-such-flag")
    assert bad.returncode != 0 and "unrecognized arguments" in bad.stderr


def test_the_demo_uses_every_gpu_when_there_are_some() -> None:
    from serving.commands.demo import demo_spec

    assert demo_spec().sharding.world_size == 2
    for gpus in (1, 3, 8, 20):
        spec = demo_spec(gpus)
        world = min(gpus, 16)
        assert spec.sharding.world_size == world
        ranks = {s.rank for s in spec.plan()["items"].shards}
        assert ranks == set(range(world))
