"""benchmarks/locustfile.py, headless as docs/performance.md runs it, against a real server."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http.server import ROOT, Server

pytestmark = pytest.mark.slow


def test_the_locustfile_loads_a_real_server(
    server: Server, model_path: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "SEQSERVE_BENCH_MODEL": str(model_path),
        "SEQSERVE_BENCH_MODEL_NAME": "small",
        "SEQSERVE_BENCH_POOL": "64",
    }
    locust = Path(sys.executable).with_name("locust")
    run = subprocess.run(
        [str(locust), "-f", "benchmarks/locustfile.py", "--headless", "-u", "4", "-r", "4",
         "-t", "4s", "--host", server.url, "--csv", str(tmp_path / "run"), "--only-summary"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    for fmt in ("json", "msgpack"):
        row = stats[f"/predictions/small [{fmt}]"]
        assert int(row["Request Count"]) > 10, row
        assert int(row["Failure Count"]) == 0, row
    assert int(stats["Aggregated"]["Failure Count"]) == 0
