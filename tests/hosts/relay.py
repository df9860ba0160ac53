"""A switch with a delay between network namespaces: one TUN device in each, packets carried
from one to another by destination address, each held for `--delay-ms` on the way.

It stands in for `tc qdisc ... netem delay`, which this kernel lacks (CONFIG_NET_SCH_NETEM is
not set). The devices belong to this process: they vanish when it exits, however it exits.

    python -m tests.hosts.relay --delay-ms 0.25 /run/netns/A=sqA0=10.231.7.1 ...

prints "ready" once every device exists (the caller gives them addresses and brings them up),
then reads commands on stdin: "delay MS" sets the delay from then on (answered "ok").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import struct
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def open_tun(netns: str, name: str) -> int:
    """A TUN device called `name` in the namespace at `netns`, held by the returned fd."""
    here = "/proc/self/ns/net"
    home = os.open(here, os.O_RDONLY)
    try:
        setns(netns)
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        return fd
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(home)


class Port:
    """One device's outgoing line: packets wait here until their time comes."""

    def __init__(self, fd: int, delay: float):
        self.fd, self.delay = fd, delay
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.ready = threading.Condition()
        threading.Thread(target=self._send, daemon=True).start()

    def put(self, packet: bytes) -> None:
        with self.ready:
            self.queue.append((time.monotonic() + self.delay, packet))
            self.ready.notify()

    def _send(self) -> None:
        while True:
            with self.ready:
                while not self.queue:
                    self.ready.wait()
                due, packet = self.queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with contextlib.suppress(OSError):  # the device is down: lost, as on a cut link
                os.write(self.fd, packet)


def carry(fd: int, ports: dict[bytes, Port]) -> None:
    while True:
        try:
            packet = os.read(fd, 65536)
        except OSError:
            time.sleep(0.01)  # the device is down
            continue
        if len(packet) >= 20 and packet[0] >> 4 == 4:  # IPv4 only; nothing else is routed
            port = ports.get(packet[16:20])
            if port is not None:
                port.put(packet)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("devices", nargs="+", help="NETNS_PATH=DEVICE=ADDRESS")
    args = ap.parse_args()
    fds, ports = [], {}
    for d in args.devices:
        netns, name, address = d.split("=")
        fd = open_tun(netns, name)
        fds.append(fd)
        ports[ipaddress.IPv4Address(address).packed] = Port(fd, args.delay_ms / 1e3)
    for fd in fds:
        threading.Thread(target=carry, args=(fd, ports), daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:  # until the caller closes our stdin (or kills us)
        command, value = line.split()
        assert command == "delay", line
        for port in ports.values():
            port.delay = float(value) / 1e3
        print("ok", flush=True)


if __name__ == "__main__":
    main()
