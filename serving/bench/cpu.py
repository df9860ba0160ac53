"""CPU time of a server's process tree, by role, read from /proc (Linux; elsewhere: nothing).

The bench divides it by the requests of a level: where each front spends its CPU per request
(HTTP front, rank processes, TorchServe's Java frontend) is what limits it on a small machine.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (a scan: /proc/PID/task/*/children is not always
    compiled into the kernel)."""
    out = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children.get(p, [])
    return pids


def role(pid: int, root: int) -> str:
    """What a process of a server's tree does, from its command line."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    cmd = b" ".join(argv)
    if pid == root:
        return "front"  # seqserve serve: uvicorn, batcher and driver; or the TorchServe launcher
    if Path(argv[0].decode(errors="replace")).name == "java":
        return "java"
    if b"torchrun" in cmd or b"torch.distributed.run" in cmd:
        return "torchrun"
    if b"multiprocessing.resource_tracker" in cmd:
        return "other"
    return "ranks"  # our rank processes, or TorchServe's model_service_worker ranks


def seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far; None once it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(root: int | None) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds) for the tree under `root`; empty without /proc or a root."""
    if root is None or not PROC.is_dir():
        return {}
    out = {}
    for pid in tree(root):
        s = seconds(pid)
        if s is not None:
            out[pid] = (role(pid, root), s)
    return out


def per_request(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], requests: int
) -> dict[str, float] | None:
    """Milliseconds of CPU per request by role between two snapshots (processes in both)."""
    if not before or not after or requests <= 0:
        return None
    by_role: dict[str, float] = {}
    for pid, (name, s1) in after.items():
        if pid in before:
            by_role[name] = by_role.get(name, 0.0) + s1 - before[pid][1]
    out = {name: 1000 * s / requests for name, s in sorted(by_role.items()) if name != "gone"}
    out["total"] = sum(out.values())
    return out
