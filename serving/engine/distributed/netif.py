"""Which network interface a host's ranks use to reach the ranks on the other hosts.

gloo (and NCCL) bind to the address the host name resolves to unless told an interface;
where that is 127.0.0.1, as on many hosts, every rank tells the others to connect to
127.0.0.1 and the group never forms. So a host of a multi-host group picks the interface that
carries its connection to the other hosts, and its ranks are started with GLOO_SOCKET_IFNAME
and NCCL_SOCKET_IFNAME naming it.

In order: `--cluster-interface` (an interface name or one of this host's addresses); else the
variables as the user set them; else the interface of `found`, the address this host was
reached at (the front: its `--host`, or where the first worker's connection arrived when
`--host` is a wildcard) or reaches the front from (a worker: its connection's own address).
"""

from __future__ import annotations

import array
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SIOCGIFCONF = 0x8912
_IFREQ = 40  # sizeof(struct ifreq) on 64-bit Linux
WILDCARDS = ("", "0.0.0.0", "::")
# The variable each backend reads; both are set, so a CPU front can serve CUDA workers' peers.
GLOO, NCCL = "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"


class InterfaceError(ValueError):
    """No interface fits what was asked for; the message says what exists."""


@dataclass(frozen=True)
class Cluster:
    """How this host's ranks reach the other hosts."""

    interface: str  # empty: unknown (a variable the user set names several)
    address: str  # what the ranks bind and tell their peers; empty: unknown
    how: str  # "--cluster-interface", the variable the user set, or "found"
    env: dict[str, str] = field(default_factory=dict)  # to set in each rank process


def plain(address: str) -> str:
    """`address` without an IPv4-mapped IPv6 prefix or a zone."""
    address = address.split("%", 1)[0]
    return address.removeprefix("::ffff:") if "." in address else address


def interfaces() -> list[tuple[str, str]]:
    """(interface, address) for every address of this host, IPv4 first, each in the order
    the kernel lists them (gloo takes an interface's first address)."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        buf = array.array("B", bytes(_IFREQ * 128))
        req = struct.pack("iL", len(buf), buf.buffer_info()[0])
        size = struct.unpack("iL", fcntl.ioctl(s.fileno(), SIOCGIFCONF, req))[0]
        data = buf.tobytes()[:size]
    for i in range(0, size, _IFREQ):
        name = data[i : i + 16].split(b"\0", 1)[0].decode()
        out.append((name.split(":", 1)[0], socket.inet_ntoa(data[i + 20 : i + 24])))
    inet6 = Path("/proc/net/if_inet6")
    for line in inet6.read_text().splitlines() if inet6.exists() else []:
        raw, *_, name = line.split()
        out.append((name, str(ipaddress.IPv6Address(bytes.fromhex(raw)))))
    return out


def interface_of(address: str) -> str:
    """The interface that holds `address`."""
    address = plain(address)
    for name, a in interfaces():
        if a == address:
            return name
    raise InterfaceError(f"no interface of this host has the address {address} ({_listing()})")


def address_of(interface: str) -> str:
    """The address gloo binds on `interface`: its first IPv4 address, else its first IPv6."""
    for name, a in interfaces():
        if name == interface:
            return a
    raise InterfaceError(f"this host has no interface {interface!r} with an address ({_listing()})")


def _listing() -> str:
    return "it has " + ", ".join(f"{n} {a}" for n, a in interfaces())


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(plain(address)).is_loopback
    except ValueError:
        return False


def choose(setting: str, found: str, environ: Mapping[str, str] | None = None) -> Cluster:
    """The interface this host's ranks use (see the module's note for the order)."""
    environ = os.environ if environ is None else environ
    if setting:
        try:
            ipaddress.ip_address(plain(setting))
            interface, address = interface_of(setting), plain(setting)
        except ValueError:
            interface = setting
            address = address_of(setting)
        return Cluster(interface, address, "--cluster-interface", _env(interface, {}))
    mine = {v: environ[v] for v in (GLOO, NCCL) if environ.get(v)}
    if GLOO in mine:  # the user's choice stands; we only learn its address
        first = mine[GLOO].split(",", 1)[0]
        return Cluster(first, address_of(first), GLOO, _env(first, mine))
    interface = interface_of(found)
    return Cluster(
        interface, address_of(interface), NCCL if mine else "found", _env(interface, mine)
    )


def _env(interface: str, mine: Mapping[str, str]) -> dict[str, str]:
    # NCCL matches a prefix ("eth" is eth0, eth1...) unless the name starts with "=".
    ours = {GLOO: interface, NCCL: f"={interface}"}
    return {k: v for k, v in ours.items() if k not in mine}
