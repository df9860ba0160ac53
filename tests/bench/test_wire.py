"""The bench's HTTP/1.1 client against a raw asyncio server that answers each way it may."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from serving.bench import wire

Reply = Callable[[bytes], bytes]


def length(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def chunked(body: bytes) -> bytes:
    half = len(body) // 2
    parts = [body[:half], body[half:]]
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts if p)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


def closing(body: bytes) -> bytes:
    return b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


async def serve(reply: Reply) -> tuple[asyncio.Server, list[int]]:
    """Echoes each request's body through `reply`; counts connections."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                size = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                out = reply(await reader.readexactly(size))
                writer.write(out)
                await writer.drain()
                if b"Connection: close" in out:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), connections


def drive(reply: Reply, clients: int = 3, seconds: float = 0.3, **kw: Any) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        server, connections = await serve(reply)
        port = server.sockets[0].getsockname()[1]
        seen: list[tuple[int, bytes]] = []
        heads: list[bytes] = []
        bodies = [b"zero", b"one-one", b""]

        def on_ok(client: int, n: int, t0: float, index: int, content: bytes, head: bytes) -> None:
            seen.append((index, content))
            heads.append(head)

        results = await wire.run_clients(
            f"http://127.0.0.1:{port}/predictions/m",
            bodies,
            {"Content-Type": "application/msgpack"},
            clients,
            time.perf_counter() + seconds,
            on_ok=on_ok,
            **kw,
        )
        server.close()
        await server.wait_closed()
        return {
            "results": results,
            "seen": seen,
            "heads": heads,
            "bodies": bodies,
            "connections": connections,
        }

    return wire.run(main())


def test_content_length_answers_keep_one_connection_per_client() -> None:
    out = drive(lambda b: length(b.upper()))
    assert len(out["results"]) > 10
    assert {r[2] for r in out["results"]} == {200}
    assert all(content == out["bodies"][i].upper() for i, content in out["seen"])
    assert len(out["connections"]) == 3  # keep-alive: no reconnects
    # the answer's head as sent, for the checks that read a header (v2's binary answers)
    assert {h.split(b"\r\n")[0] for h in out["heads"]} == {b"HTTP/1.1 200 OK"}
    pairs = zip(out["heads"], out["seen"], strict=True)
    assert all(h.endswith(b"Content-Length: %d" % len(c)) for h, (_, c) in pairs)


def test_chunked_answers_are_joined() -> None:
    out = drive(lambda b: chunked(b + b"!"))
    assert {r[2] for r in out["results"]} == {200}
    assert all(content == out["bodies"][i] + b"!" for i, content in out["seen"])


def test_a_closed_connection_is_opened_again() -> None:
    out = drive(closing, clients=1)
    statuses = [r[2] for r in out["results"]]
    assert len(statuses) > 3 and set(statuses) == {503}
    assert len(out["connections"]) == len(statuses)  # one connection per answer
    assert out["seen"] == []  # on_ok is for 200s only


def test_garbage_and_refusals_are_counted_by_name() -> None:
    out = drive(lambda b: b"NOT HTTP AT ALL\r\n\r\n", clients=1, seconds=0.2)
    assert {r[2] for r in out["results"]} == {"ProtocolError"}

    async def refused() -> list[wire.Result]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens on `port` now
        return await wire.run_clients(
            f"http://127.0.0.1:{port}/x", [b"{}"], {}, 1, time.perf_counter() + 0.1
        )

    assert {r[2] for r in wire.run(refused())} == {"ConnectionRefusedError"}


def test_a_missing_answer_times_out() -> None:
    out = drive(lambda b: b"", clients=1, seconds=0.05, timeout=0.1)  # b"": never answers
    assert [r[2] for r in out["results"]] == ["TimeoutError"]
    assert out["results"][0][1] > 0.09  # the loop clock and perf_counter differ slightly


def test_requests_are_built_once_with_their_length() -> None:
    built = wire.requests_for("http://h:1/predictions/m", [b"abc"], {"Accept": "x"})
    assert built == [
        b"POST /predictions/m HTTP/1.1\r\nHost: h:1\r\nAccept: x\r\nContent-Length: 3\r\n\r\nabc"
    ]


def test_progress_ticks_while_clients_run() -> None:
    ticks: list[int] = []
    drive(lambda b: length(b), seconds=0.35, tick=0.1, on_tick=lambda r: ticks.append(len(r)))
    assert len(ticks) >= 2 and ticks == sorted(ticks)
