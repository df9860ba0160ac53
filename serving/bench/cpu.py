"""CPU time and resident memory of a server's process tree, by kind, read from /proc (Linux;
elsewhere: nothing).

The bench divides the CPU by the requests of a level: where each server spends its CPU per
request (HTTP fronts, the engine, rank processes, TorchServe's Java frontend) is what limits it
on a small machine. A seqserve server lists its own processes (GET /models/{model}
"processes"); `kinds` places the rest of its tree around them. Other servers (TorchServe, the
HTTP ceiling) get a role from each command line (`role`): spawned children all share one
(`python -c "from multiprocessing.spawn import spawn_main..."`), so that cannot tell a
seqserve front from its engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROC = Path("/proc")
# The order the table shows the kinds in; the command-line roles (java, torchrun...) follow.
KINDS = ("front", "engine", "server", "ranks", "parent", "other")
# Kinds whose children are rank processes: the engine's (--workers N) or the one server's.
RANK_OWNERS = ("engine", "server", "ranks")

Snapshot = dict[int, tuple[str, float]]  # pid -> (kind, CPU seconds)


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


def tree(pid: int, parents: Mapping[int, int] | None = None) -> list[int]:
    """`pid` and every process below it, each after its parent."""
    children: dict[int, list[int]] = {}
    for child, parent in (_parents() if parents is None else parents).items():
        children.setdefault(parent, []).append(child)
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += sorted(children.get(p, []), reverse=True)
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


def kinds(root: int, parents: Mapping[int, int], listed: Mapping[int, str]) -> dict[int, str]:
    """pid -> kind for `root`'s tree, from the kinds the server lists (`listed`: engine,
    front, server): a listed process keeps its kind; `root` unlisted is the supervisor of
    --workers N ("parent"); below an engine or server, its rank processes ("ranks"), but for
    multiprocessing's resource tracker, which, like anything else unlisted, is "other"."""
    out: dict[int, str] = {}
    for pid in tree(root, parents):  # a parent's kind is known before its children's
        if pid in listed:
            out[pid] = listed[pid]
        elif pid == root:
            out[pid] = "parent"
        elif out.get(parents.get(pid, -1)) in RANK_OWNERS and role(pid, root) != "other":
            out[pid] = "ranks"
        else:
            out[pid] = "other"
    return out


def seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far; None once it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process in MiB (VmRSS); None once it is gone (or a zombie,
    which has no VmRSS line)."""
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def snapshot(root: int | None, listed: Mapping[int, str] | None = None) -> Snapshot:
    """pid -> (kind, CPU seconds) for the tree under `root`, kinds from `listed` (see `kinds`)
    or, without it, from command lines; empty without /proc or a root."""
    if root is None or not PROC.is_dir():
        return {}
    parents = _parents()
    if listed:
        named = kinds(root, parents, listed)
    else:
        named = {pid: role(pid, root) for pid in tree(root, parents)}
    out = {}
    for pid, kind in named.items():
        s = seconds(pid)
        if s is not None and kind != "gone":
            out[pid] = (kind, s)
    return out


def _place(kind: str) -> tuple[int, str]:
    """Sorts kinds as KINDS lists them, then the others by name."""
    return (KINDS.index(kind) if kind in KINDS else len(KINDS), kind)


def _ordered(by_kind: dict[str, Any]) -> dict[str, Any]:
    return {k: by_kind[k] for k in sorted(by_kind, key=_place)}


def per_request(before: Snapshot, after: Snapshot, requests: int) -> dict[str, float] | None:
    """Milliseconds of CPU per request by kind between two snapshots (processes in both), each
    kind summed over its processes (all the fronts together), and their total."""
    if not before or not after or requests <= 0:
        return None
    by_kind: dict[str, float] = {}
    for pid, (kind, s1) in after.items():
        if pid in before:
            by_kind[kind] = by_kind.get(kind, 0.0) + 1000 * (s1 - before[pid][1]) / requests
    out = _ordered(by_kind)
    out["total"] = sum(by_kind.values())
    return out


def counts(snap: Snapshot) -> dict[str, int] | None:
    """How many processes of each kind a snapshot holds."""
    if not snap:
        return None
    by_kind: dict[str, int] = {}
    for kind, _ in snap.values():
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return _ordered(by_kind)


def resident(snap: Snapshot) -> list[dict[str, Any]] | None:
    """{pid, kind, rss_mb} of each process of a snapshot still there, read now."""
    if not snap:
        return None
    out = []
    for pid, (kind, _) in sorted(snap.items(), key=lambda x: (_place(x[1][0]), x[0])):
        mb = rss_mb(pid)
        if mb is not None:
            out.append({"pid": pid, "kind": kind, "rss_mb": round(mb, 1)})
    return out
