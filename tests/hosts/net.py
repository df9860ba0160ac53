"""Hosts on network namespaces, each with its own address, joined by a switch with a delay.

Every host is a namespace with loopback and one TUN device on 10.231.S.0/24 (S picked per
run); the switch is `tests/hosts/relay.py`, which adds the one-way delay (the kernel here has
no netem). The calling process sits on the switch too, at 10.231.S.254 on a device of its own
in its own namespace, so it reaches a host's address as any other host would. Nothing
travels over loopback between hosts, and nothing is sent beyond the namespaces made here.

Names are unique per run; `close()` kills every process started in a host, then the switch
(its devices go with it), then the namespaces, and it runs however the caller ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NETNS_DIR = Path("/run/netns")


def tool(name: str) -> str | None:
    """Where a system command is, also where PATH leaves out the sbin folders."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


IP = tool("ip") or "ip"
NFT = tool("nft") or "nft"


def unavailable() -> str:
    """Why namespaces cannot be made here (empty: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if tool("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    probe = f"sqprobe{os.getpid()}"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run([IP, "netns", "del", probe], capture_output=True)
    return ""


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, text=True)


def _free_subnet() -> int:
    """A third octet of 10.231.S.0/24 that no interface in this namespace uses now."""
    used = subprocess.run([IP, "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        s = 1 + secrets.randbelow(250)
        if f"10.231.{s}." not in used:
            return s
    raise RuntimeError("no free 10.231.S.0/24 subnet")


class Hosts:
    """Namespaces named `names` (e.g. "a", "b") on one switch, with the caller on it too."""

    def __init__(self, names: Sequence[str], delay_ms: float = 0.0):
        self.run_id = secrets.token_hex(2)
        self.delay_ms = delay_ms
        self.subnet = _free_subnet()
        self.names = list(names)
        self.procs: list[subprocess.Popen[Any]] = []
        self.made: list[str] = []
        self.relay: subprocess.Popen[str] | None = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def netns(self, name: str) -> str:
        return f"sq{self.run_id}-{name}"

    def device(self, name: str) -> str:
        return f"sq{self.run_id}d{self.names.index(name)}"

    def address(self, name: str) -> str:
        return f"10.231.{self.subnet}.{self.names.index(name) + 1}"

    @property
    def client_device(self) -> str:
        return f"sq{self.run_id}c"

    @property
    def client_address(self) -> str:
        return f"10.231.{self.subnet}.254"

    def _build(self) -> None:
        for name in self.names:
            _ip("netns", "add", self.netns(name))
            self.made.append(self.netns(name))
            _ip("-n", self.netns(name), "link", "set", "lo", "up")
        devices = [
            f"{NETNS_DIR / self.netns(n)}={self.device(n)}={self.address(n)}" for n in self.names
        ]
        devices.append(f"/proc/{os.getpid()}/ns/net={self.client_device}={self.client_address}")
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "tests.hosts.relay", "--delay-ms", str(self.delay_ms), *devices],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.relay.stdout is not None
        line = self.relay.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the relay did not start: {line!r}")
        for n in self.names:
            ns, dev = self.netns(n), self.device(n)
            # A TUN device's MTU may be large: the relay then moves few, big packets, as a NIC
            # with segmentation offload would hand the kernel.
            _ip("-n", ns, "link", "set", dev, "mtu", "65000", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(n)}/24", "dev", dev)
        _ip("link", "set", self.client_device, "mtu", "65000", "up")
        _ip("addr", "add", f"{self.client_address}/24", "dev", self.client_device)

    def set_delay(self, ms: float) -> None:
        """Each packet between hosts waits `ms` from now on (one way)."""
        assert self.relay is not None and self.relay.stdin and self.relay.stdout
        self.relay.stdin.write(f"delay {ms}\n")
        self.relay.stdin.flush()
        assert self.relay.stdout.readline().strip() == "ok"
        self.delay_ms = ms

    @contextlib.contextmanager
    def on(self, name: str) -> Iterator[None]:
        """The calling thread (and the threads and processes it starts meanwhile) on host
        `name`, so that this process may hold sockets there; back where it was after."""
        from tests.hosts.relay import setns

        home = "/proc/thread-self/ns/net"
        with open(home, "rb") as here:
            setns(str(NETNS_DIR / self.netns(name)))
            try:
                yield
            finally:
                setns(f"/proc/self/fd/{here.fileno()}")

    def exec(self, name: str) -> list[str]:
        """The command prefix that runs a command on host `name`."""
        return [IP, "netns", "exec", self.netns(name)]

    def spawn(self, name: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start `argv` on host `name` (killed by close())."""
        proc = subprocess.Popen([*self.exec(name), *argv], cwd=ROOT, **popen)
        self.procs.append(proc)
        return proc

    def sh(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.exec(name), *argv], capture_output=True, text=True, check=True)

    def unplug(self, name: str) -> None:
        _ip("-n", self.netns(name), "link", "set", self.device(name), "down")

    def plug(self, name: str) -> None:
        _ip("-n", self.netns(name), "link", "set", self.device(name), "up")

    def firewall(self, name: str, allow_ports: Sequence[int]) -> None:
        """Host `name` drops every TCP packet that reaches it from other hosts except those to
        `allow_ports` and those of connections it opened: a firewall told only of those ports."""
        allowed = ", ".join(str(p) for p in allow_ports)
        accept = [f"tcp dport {{ {allowed} }} accept"] if allow_ports else []
        self._drop_tcp_but(name, [*accept, "ct state established,related accept"])

    def drop_all_tcp(self, name: str) -> None:
        """Host `name` drops every TCP packet from other hosts, established connections too."""
        self._drop_tcp_but(name, [])

    def _drop_tcp_but(self, name: str, accept: Sequence[str]) -> None:
        rules = [
            "type filter hook input priority 0; policy accept;",
            'iifname "lo" accept',
            *accept,
            "meta l4proto tcp drop",
        ]
        chain = "".join(f"    {r}\n" for r in rules)
        table = f"table inet seqserve_test {{\n  chain input {{\n{chain}  }}\n}}\n"
        subprocess.run([*self.exec(name), NFT, "-f", "-"], input=table, check=True, text=True)

    def open_firewall(self, name: str) -> None:
        subprocess.run(
            [*self.exec(name), NFT, "delete", "table", "inet", "seqserve_test"], check=True
        )

    def kill_host(self, name: str) -> None:
        """SIGKILL every process on host `name`: the host is gone (its network stays)."""
        for pid in self._pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs:
            if p.args[: len(self.exec(name))] == self.exec(name):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)

    def _pids(self, name: str) -> list[int]:
        out = subprocess.run(
            [IP, "netns", "pids", self.netns(name)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        for ns in self.made:
            # Anything a host's processes started (rank processes) is in its namespace too.
            for pid in self._pids(ns.rsplit("-", 1)[1]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(self._pids(ns.rsplit("-", 1)[1]) for ns in self.made):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self.relay is not None and self.relay.poll() is None:
            self.relay.kill()
            self.relay.wait(timeout=10)
        for ns in self.made:
            subprocess.run([IP, "netns", "del", ns], capture_output=True)
        self.made = []

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
