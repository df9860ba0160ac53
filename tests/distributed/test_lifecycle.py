"""Rank processes never outlive the driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import alive

pytestmark = pytest.mark.slow

DRIVER = """
import sys, time
from serving.engine.distributed.driver import DistributedEngine
from tests.distributed.plans import spec
if __name__ == "__main__":
    engine = DistributedEngine(spec(2, 8, [("items", 10, ["a"], [0, 1])]), threads_per_rank=1)
    engine.start()
    print(" ".join(map(str, engine.pids)), flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_ranks_exit_when_the_driver_dies(tmp_path: Path, how: signal.Signals) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        proc.send_signal(how)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in pids), f"ranks {pids} outlived the driver"
    finally:
        proc.kill()
        proc.wait()
