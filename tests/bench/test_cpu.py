"""The bench's CPU and memory by process kind, on a fake /proc: a seqserve host's tree (the
supervisor, its engine and fronts, the engine's rank processes, resource trackers) placed
from what the server lists of itself, and the command-line roles where it lists nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.bench import cpu, load, report, run

SPAWN = "python -B -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=4)"
TRACKER = "python -B -c from multiprocessing.resource_tracker import main;main(3)"
# pid: (parent, command line, CPU ticks, VmRSS kB) of `seqserve serve --workers 2` and a stranger
HOST: dict[int, tuple[int, str, int, int]] = {
    100: (1, "python -m serving.commands.cli serve --workers 2", 10, 300 * 1024),
    101: (100, TRACKER, 1, 10 * 1024),
    102: (100, SPAWN, 40, 400 * 1024),  # the engine
    103: (100, SPAWN, 20, 90 * 1024),  # front 0
    104: (100, SPAWN, 30, 95 * 1024),  # front 1
    105: (102, SPAWN, 50, 200 * 1024),  # rank 0
    106: (102, SPAWN, 50, 200 * 1024),  # rank 1
    107: (102, TRACKER, 1, 10 * 1024),  # the engine's own resource tracker
    108: (105, SPAWN, 5, 50 * 1024),  # below a rank: still the ranks' work
    200: (1, SPAWN, 99, 1024),  # not the server's
}
LISTED = {102: "engine", 103: "front", 104: "front"}  # GET /models/{model} "processes"


def fake_proc(root: Path, procs: dict[int, tuple[int, str, int, int]], extra: int = 0) -> None:
    """/proc/PID/{stat,cmdline,status} for `procs`, each with `extra` more CPU ticks."""
    for pid, (parent, cmd, ticks, rss_kb) in procs.items():
        d = root / str(pid)
        d.mkdir(exist_ok=True)
        # after "(comm)": state, ppid, 9 fields, utime (here all the ticks), stime
        zeros = " ".join(["0"] * 9)
        (d / "stat").write_text(f"{pid} (python) S {parent} {zeros} {ticks + extra} 0 0")
        (d / "cmdline").write_bytes(cmd.replace(" ", "\0").encode() + b"\0")
        (d / "status").write_text(f"Name:\tpython\nVmRSS:\t{rss_kb} kB\nThreads:\t4\n")


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake_proc(tmp_path, HOST)
    monkeypatch.setattr(cpu, "PROC", tmp_path)
    return tmp_path


def test_kinds_come_from_the_server_list_and_the_engine_children_are_ranks(proc: Path) -> None:
    parents = {pid: p[0] for pid, p in HOST.items()}
    assert cpu.kinds(100, parents, LISTED) == {
        100: "parent",  # the supervisor does not list itself
        101: "other",
        102: "engine",
        103: "front",
        104: "front",
        105: "ranks",
        106: "ranks",
        107: "other",  # a resource tracker under the engine is no rank
        108: "ranks",
    }


def test_with_one_worker_the_server_children_are_ranks(proc: Path) -> None:
    parents = {100: 1, 102: 100, 107: 100, 200: 1}
    assert cpu.kinds(100, parents, {100: "server"}) == {100: "server", 102: "ranks", 107: "other"}


def test_cpu_per_request_by_kind_sums_the_fronts_and_counts_them(proc: Path) -> None:
    before = cpu.snapshot(100, LISTED)
    assert 200 not in before
    fake_proc(proc, HOST, extra=100)  # every process: 100 more ticks, 1 s at 100 ticks a second
    after = cpu.snapshot(100, LISTED)
    ms = 1000 * 100 / os.sysconf("SC_CLK_TCK") / 1000  # 1000 requests
    got = cpu.per_request(before, after, 1000)
    assert got is not None
    assert list(got) == ["front", "engine", "ranks", "parent", "other", "total"]
    assert got["front"] == pytest.approx(2 * ms) and got["ranks"] == pytest.approx(3 * ms)
    assert got["engine"] == pytest.approx(ms) and got["parent"] == pytest.approx(ms)
    assert got["total"] == pytest.approx(9 * ms)
    assert cpu.counts(after) == {"front": 2, "engine": 1, "ranks": 3, "parent": 1, "other": 2}
    rss = cpu.resident(after)
    assert rss is not None and rss[:3] == [
        {"pid": 103, "kind": "front", "rss_mb": 90.0},
        {"pid": 104, "kind": "front", "rss_mb": 95.0},
        {"pid": 102, "kind": "engine", "rss_mb": 400.0},
    ]
    row = {
        "front": "fastapi:2",
        "format": "msgpack",
        "concurrency": 32,
        "server_cpu_ms_per_req": got,
        "server_processes": cpu.counts(after),
        "server_rss": rss,
        "client_cpu_ms_per_req": None,
    }
    assert report._cpu(row).startswith(f"{9 * ms:.2f} (front x2 {2 * ms:.2f}, engine {ms:.2f}")
    assert report.resident([row])[-1] == (
        "| fastapi:2 | msgpack x32 "
        "| front x2 95, engine 400, ranks x3 200, parent 300, other x2 10 |"
    )


def test_without_a_list_the_command_lines_give_the_roles(proc: Path) -> None:
    java = {300: (1, "/usr/bin/java -cp ts.jar", 5, 1024), 301: (300, SPAWN, 5, 1024)}
    fake_proc(proc, java)
    assert {pid: kind for pid, (kind, _) in cpu.snapshot(300).items()} == {
        300: "front",
        301: "ranks",
    }
    fake_proc(proc, {302: (1, "python ts_launcher", 1, 1), 303: (302, "/opt/jdk/bin/java", 1, 1)})
    assert cpu.snapshot(302, {})[303][0] == "java"


def test_the_list_is_read_from_the_models_route(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[httpx.Response] = []
    seen: list[dict[str, Any]] = []

    def get(url: str, headers: dict[str, str], timeout: float) -> httpx.Response:
        seen.append({"url": url, **headers})
        return answers.pop(0)

    monkeypatch.setattr(httpx, "get", get)
    doc = {"processes": [{"kind": "engine", "pid": 7}, {"kind": "front", "index": 0, "pid": 8}]}
    answers.append(httpx.Response(200, json=doc))
    assert load.processes("http://h", "demo", {"Authorization": "Bearer t"}) == {
        7: "engine",
        8: "front",
    }
    assert seen == [{"url": "http://h/models/demo", "Authorization": "Bearer t"}]
    for missing in (
        httpx.Response(404, json={"code": 404}),  # TorchServe's inference port
        httpx.Response(200, json={"version": 1}),  # no processes field
        httpx.Response(200, content=b"\x93"),  # not JSON: the HTTP ceiling
    ):
        answers.append(missing)
        assert load.processes("http://h", "demo", {}) == {}


def test_compare_takes_fastapi_with_a_worker_count() -> None:
    assert load.parse_front("fastapi") == ("fastapi", 1)
    assert load.parse_front("fastapi:4") == ("fastapi", 4)
    assert load.parse_front("torchserve") == ("torchserve", 1)
    for bad in ("fastapi:0", "fastapi:x", "fastapi:", "torchserve:2", "flask"):
        with pytest.raises(ValueError):
            load.parse_front(bad)
    cmd = load.server_command("fastapi:2", 1234, Path("/tmp"))
    assert cmd[cmd.index("--workers") + 1] == "2" and "--grpc-port" in cmd
    plain = load.server_command("fastapi", 1234, Path("/tmp"))
    assert plain[plain.index("--workers") + 1] == "1"  # SEQSERVE_WORKERS cannot change it
    assert "--workers" not in load.server_command("torchserve", 1234, Path("/tmp"))
    assert run._fronts("fastapi, fastapi:2,torchserve") == ["fastapi", "fastapi:2", "torchserve"]
    with pytest.raises(ValueError, match="once"):
        run._fronts("fastapi:2,fastapi:2")
