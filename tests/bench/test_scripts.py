"""The benchmark scripts run from a clean checkout and write what the README and docs quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def bench(tmp_path: Path, *flags: str) -> list[dict[str, object]]:
    out = tmp_path / "out.json"
    subprocess.run(
        [sys.executable, "benchmarks/engine_bench.py", "--sizes", "1,8", "--reps", "1"]
        + ["--block", "1", "--out", str(out), *flags],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return json.loads(out.read_text())["results"]  # type: ignore[no-any-return]


def test_engines_side_by_side(tmp_path: Path) -> None:
    rows = bench(tmp_path, "--no-distributed")
    assert [r["sequences"] for r in rows] == [1, 8]
    assert all(r["local_ids_per_s"] > 0 and r["unsharded_ids_per_s"] > 0 for r in rows)


def test_stored_dtypes_side_by_side_with_bytes_per_rank(tmp_path: Path) -> None:
    rows = bench(tmp_path, "--realistic")
    for d in ("fp32", "fp16", "int8", "mixed"):
        assert all(r[f"{d}_ids_per_s"] > 0 for r in rows)  # type: ignore[operator]
    memory = rows[0]["bytes_per_rank"]
    assert isinstance(memory, dict)
    # int8: a byte a column plus 4 per row, against fp32's 4 bytes a column.
    assert memory["int8"]["0"] < 0.3 * memory["fp32"]["0"]


def test_update_bench_measures_deltas_readers_and_a_reload(tmp_path: Path) -> None:
    out = tmp_path / "updates.json"
    subprocess.run(
        [sys.executable, "benchmarks/update_bench.py", "--rows", "3000", "--seconds", "1"]
        + ["--clients", "4", "--out", str(out)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = json.loads(out.read_text())
    assert set(result["deltas"]) == {"1000", "3000"}  # 100k and 1M capped at the table's rows
    assert all(r["requests"] > 0 for r in result["readers"].values())
    assert result["readers"]["1k/0.1s"]["deltas_applied"] > 0
    assert result["reload"]["peak_mb"] >= result["reload"]["rss_after_mb"]


def test_nodes_bench_times_one_host_against_two(tmp_path: Path) -> None:
    from tests.hosts.net import unavailable

    reason = unavailable()
    if reason:
        pytest.skip(f"nodes_bench runs on network namespaces: {reason}")
    out = tmp_path / "nodes.json"
    subprocess.run(
        [sys.executable, "benchmarks/nodes_bench.py", "--sizes", "1,8", "--reps", "2"]
        + ["--delays", "0.25", "--out", str(out)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    rows = json.loads(out.read_text())["results"]
    assert [(r["delay_ms"], r["requests"]) for r in rows] == [(0.25, 1), (0.25, 8)]
    assert all(r["one_host_ms"] > 0 and r["two_hosts_ms"] > 0 for r in rows)
    assert all(r["rtt_ms"] >= 0.5 for r in rows)  # 0.25 ms each way, twice


@pytest.mark.parametrize("script", ["engine_bench.py", "shm_bench.py"])
def test_help_prints(script: str) -> None:
    out = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--help"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr
