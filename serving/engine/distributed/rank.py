"""One rank process: joins the group, holds its shards, runs every forward it is sent."""

from __future__ import annotations

import mmap
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.distributed as dist

from serving.config import ModelSpec
from serving.engine import weights
from serving.engine.distributed import dmp, reach
from serving.engine.distributed.lookup import lookup, warm_up
from serving.engine.distributed.netif import Cluster
from serving.engine.distributed.transport import (
    Done,
    Failed,
    Hello,
    NewBuffer,
    Ready,
    Stop,
    Update,
    connect,
    receive_buffer,
    why,
)
from serving.engine.quiet import quiet_torch_logs
from serving.engine.stored import Rows


@dataclass(frozen=True)
class RankArgs:
    rank: int
    spec: ModelSpec
    store_port: int
    store_prefix: str
    device: str  # "cpu" or "cuda"
    threads: int
    parent_pid: int
    store_host: str = "127.0.0.1"  # where the driver's TCPStore is, as this rank's host sees it
    # A rank on another host connects to the front's node listener itself, with the key.
    connect: tuple[str, int] | None = None
    key: bytes = b""
    node: int = 0
    local_rank: int = -1  # its index among its host's ranks (its GPU); -1: `rank`, one host
    # Across hosts: the interface that reaches the other hosts (set in gloo's and NCCL's
    # variables before the group forms) and how long each step of joining may take.
    cluster: Cluster | None = None  # None: one host, the group forms as torch.distributed does
    join_timeout: float = 0.0


def main(args: RankArgs, conn: Connection | None) -> None:
    # Ctrl-C reaches the whole process group; the driver decides when ranks stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_torch_logs()
    _watch_parent(args.parent_pid)
    if conn is None:  # on another host: open our own connection to the front
        assert args.connect is not None
        try:
            conn = connect(args.connect, args.key, args.join_timeout or reach.ARRIVAL_S)
        except OSError as e:
            host, port = args.connect
            _say(args, f"cannot reach the front at {host}:{port} ({why(e)})")
            sys.exit(1)
        conn.send(Hello(args.store_prefix, args.rank, os.getpid()))
    try:
        model, device = _start(args, conn)
        warm_up(args.spec, model, device)
    except reach.Unreachable as e:
        _say(args, str(e))
        conn.send(Failed(traceback.format_exc(), summary=str(e)))
        return
    except BaseException:
        conn.send(Failed(traceback.format_exc()))
        return
    info = {
        "rank": args.rank,
        "pid": os.getpid(),
        "device": str(device),
        "peak_rss_kib": _peak_kib(),
        "node": args.node,
        "host": socket.gethostname(),
    }
    if args.cluster is not None:
        info |= {"address": args.cluster.address, "interface": args.cluster.interface}
    conn.send(Ready(info))
    try:
        _serve(args.spec, model, device, conn)
    except (EOFError, BrokenPipeError):
        pass  # the driver went away
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _say(args: RankArgs, line: str) -> None:
    """A rank on another host says why it failed on its worker's output too."""
    if args.connect is not None:
        print(f"seqserve rank {args.rank}: error: {line}", file=sys.stderr, flush=True)


def _peak_kib() -> int:
    # VmHWM belongs to this address space, so it starts afresh at exec; ru_maxrss does not,
    # and would report the spawning parent's peak as this rank's.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _watch_parent(parent_pid: int) -> None:
    """Exit when the driver dies, even by SIGKILL: no rank outlives its driver."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start(args: RankArgs, conn: Connection) -> tuple[torch.nn.Module, torch.device]:
    torch.set_num_threads(args.threads)
    world = args.spec.sharding.world_size
    if args.device == "cuda":
        device = torch.device("cuda", args.rank if args.local_rank < 0 else args.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if args.cluster is None:
        store = dist.TCPStore(args.store_host, args.store_port, is_master=False)
        prefixed = dist.PrefixStore(args.store_prefix, store)
        dist.init_process_group(backend, store=prefixed, rank=args.rank, world_size=world)
    else:
        _join(args, args.cluster, conn, backend, world)
    model = dmp.shard(args.spec, device)
    weights.load(args.spec, model, args.rank)
    return model, device


def _join(args: RankArgs, cluster: Cluster, conn: Connection, backend: str, world: int) -> None:
    """Join a group across hosts on the chosen interface, or fail in one line within
    `join_timeout` of each step (reach.py)."""
    os.environ.update(cluster.env)  # read by gloo and NCCL when the group is made
    who = f"rank {args.rank} on node {args.node}"
    store = reach.connect_store(args.store_host, args.store_port, args.join_timeout, who)
    prefixed = dist.PrefixStore(args.store_prefix, store)
    reach.check_mesh(prefixed, args.rank, world, cluster.address, args.join_timeout, who)

    def give_up(line: str) -> None:  # gloo is stuck in C++: say why from here, and go
        _say(args, line)
        conn.send(Failed(line, summary=line))
        os._exit(1)

    reach.init_group(backend, prefixed, args.rank, world, args.join_timeout, who, give_up)


def _serve(spec: ModelSpec, model: torch.nn.Module, device: torch.device, conn: Connection) -> None:
    buf: mmap.mmap | None = None
    shards = list(dmp.local_shards(spec, model))  # views of the weights the lookups read
    while True:
        msg = conn.recv()
        if isinstance(msg, Stop):
            return
        if isinstance(msg, NewBuffer):
            if buf is not None:
                buf.close()
            buf = receive_buffer(conn, msg)
            continue
        if isinstance(msg, Update):
            try:
                with torch.no_grad():
                    for s in shards:
                        if s.table in msg.tables:
                            ids, new = msg.tables[s.table]
                            s.write_ids(torch.from_numpy(ids), Rows(torch.from_numpy(new)))
                conn.send(Done(()))
            except Exception:
                conn.send(Failed(traceback.format_exc()))
            continue
        try:
            t0 = time.perf_counter()
            outputs = lookup(model, device, msg.keys, msg.lengths, msg.values)
            t1 = time.perf_counter()
            rows = tuple(int(v.shape[0]) for v in outputs)
            size = sum(v.numel() for v in outputs)
            if size:
                # Key after key, each [rows, its dim]: the driver's Layout reads them back.
                assert buf is not None, "the driver sends a buffer before rows are due"
                dest = torch.frombuffer(buf, dtype=torch.float32, count=size)
                flat = [v.reshape(-1) for v in outputs]
                if device.type == "cpu":
                    torch.cat(flat, out=dest)
                else:
                    dest.copy_(torch.cat(flat))
            conn.send(Done(rows, t1 - t0, time.perf_counter() - t1))
        except Exception:
            conn.send(Failed(traceback.format_exc()))
