"""A one-name DNS server on loopback: what Docker's embedded DNS does for a scaled service.

Compose resolves a service's name to the addresses of all its replicas; HAProxy's resolvers
ask for it and fill one server slot per address. Outside Docker this answers A queries for
`name` with `addresses` (the replicas bind 127.0.0.2, 127.0.0.3, ...), and anything else with
no records. Enough of RFC 1035 for that: one question, A records, no compression on input.
"""

from __future__ import annotations

import socket
import struct
import threading


class Dns:
    def __init__(self, name: str, addresses: list[str]):
        self.name = name.lower().rstrip(".")
        self.addresses = addresses
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return  # closed
            reply = self.answer(query)
            if reply:
                self.sock.sendto(reply, peer)

    def answer(self, query: bytes) -> bytes:
        if len(query) < 12:
            return b""
        ident, _, qdcount = struct.unpack(">HHH", query[:6])
        if qdcount != 1:
            return b""
        at, labels = 12, []
        while at < len(query) and query[at]:
            n = query[at]
            labels.append(query[at + 1 : at + 1 + n].decode("ascii", "replace"))
            at += 1 + n
        qtype, _ = struct.unpack(">HH", query[at + 1 : at + 5])
        question = query[12 : at + 5]
        ours = ".".join(labels).lower() == self.name
        records = self.addresses if ours and qtype == 1 else []
        flags = 0x8180 if ours else 0x8183  # a response, recursion available; NXDOMAIN if not ours
        header = struct.pack(">HHHHHH", ident, flags, 1, len(records), 0, 0)
        body = b"".join(
            # the name as a pointer to the question (offset 12), A, IN, TTL 1 s, 4 bytes
            struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(a)
            for a in records
        )
        return header + question + body
