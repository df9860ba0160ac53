"""The gRPC load client: N clients calling ModelInfer with pre-serialized bodies (grpc.aio).

The cheapest path through grpcio on the client side: a generic `unary_unary` with no
serializers sends each body as the bytes it was built as (serving.bench.v2.grpc_body) and hands
the answer back as bytes; only the answers the bench checks are parsed. Even so a call costs
the client ~0.15-0.3 ms of CPU here against ~0.06 ms for the HTTP/1.1 client (wire.py), CPU
taken from the server on a small machine; each level's row says how much.

Channels: by default one per client, each on its own TCP connection (a channel option keeps
grpc-core from sharing one connection among channels to one address), as the HTTP clients
each hold one keep-alive connection, so both protocols serve N connections of one call in
flight each; `shared` sends every client's calls over one channel, one HTTP/2 connection, as
one process with one stub would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit

from serving.bench.v2 import GRPC_PORT, INFER_METHOD
from serving.bench.wire import OnOk, Result, gather, run

__all__ = ["CHANNELS", "OK", "address", "first_answer", "run", "run_clients"]

CHANNELS = ("client", "shared")
OK = 200  # a call that ended OK counts as the HTTP fronts' 200 in the results
# grpc-core shares a connection among channels with the same target and options unless each
# channel keeps its own pool; answers have no size limit, as over HTTP.
OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]


def address(text: str | None, url: str | None = None) -> str:
    """host:port of the gRPC server: `text` (host:port, or a grpc:// or http:// url), else the
    host of `url` with seqserve's default gRPC port."""
    if text:
        parts = urlsplit(text if "//" in text else f"//{text}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ValueError(f"--grpc-url {text!r}: give HOST:PORT")
        return _join(parts.hostname, port)
    host = urlsplit(url).hostname if url else None
    if not host:
        raise ValueError(f"no gRPC address: give --grpc-url (the url {url!r} has no host)")
    return _join(host, GRPC_PORT)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _client(
    k: int,
    call: Any,
    bodies: Sequence[bytes],
    metadata: tuple[tuple[str, str], ...] | None,
    end: float,
    timeout: float,
    results: list[Result],
    on_ok: OnOk | None,
) -> None:
    import grpc

    n = 0
    i = k * 7919  # a different walk through the pool per client, as wire.py's
    while (t0 := time.perf_counter()) < end:
        i = (i + 1) % len(bodies)
        status: int | str
        answer = b""
        try:
            answer = await call(bodies[i], timeout=timeout, metadata=metadata)
            status = OK
        except grpc.aio.AioRpcError as e:
            status = e.code().name
        results.append((t0, time.perf_counter() - t0, status, i))
        if status == OK and on_ok is not None:
            on_ok(k, n, t0, i, answer, b"")
            n += 1


async def run_clients(
    target: str,
    bodies: Sequence[bytes],
    metadata: dict[str, str],
    clients: int,
    end: float,
    *,
    on_ok: OnOk | None = None,
    timeout: float = 60,
    tick: float = 0,
    on_tick: Callable[[list[Result]], None] | None = None,
    channels: str = "client",
    method: str = INFER_METHOD,
) -> list[Result]:
    """`clients` coroutines call `method` on `target` (host:port) with `bodies` until
    perf_counter() passes `end`, over a channel each or one `shared`; as wire.run_clients,
    with an OK counted as 200 and any other end of a call by its status code's name."""
    import grpc

    if channels not in CHANNELS:
        raise ValueError(f"channels {channels!r}: use {' or '.join(CHANNELS)}")
    count = clients if channels == "client" else 1
    opened = [grpc.aio.insecure_channel(target, options=OPTIONS) for _ in range(count)]
    try:
        calls = [c.unary_unary(method) for c in opened]  # no serializers: bytes both ways
        meta = tuple((k.lower(), v) for k, v in metadata.items()) or None
        results: list[Result] = []
        work: list[Coroutine[Any, Any, None]] = [
            _client(k, calls[k % count], bodies, meta, end, timeout, results, on_ok)
            for k in range(clients)
        ]
        return await gather(work, results, tick, on_tick)
    finally:
        for c in opened:
            await c.close()


def first_answer(target: str, body: bytes, metadata: dict[str, str], timeout: float) -> float:
    """Call until one call ends OK; the seconds it took. Raises ValueError with the last
    status when none does within `timeout` or the call is refused for good."""
    import grpc

    async def main() -> float:
        t0 = time.monotonic()
        last = "no answer"
        meta = tuple((k.lower(), v) for k, v in metadata.items()) or None
        async with grpc.aio.insecure_channel(target, options=OPTIONS) as channel:
            call = channel.unary_unary(INFER_METHOD)
            while time.monotonic() - t0 < timeout:
                try:
                    await call(body, timeout=max(1.0, timeout / 4), metadata=meta)
                    return time.monotonic() - t0
                except grpc.aio.AioRpcError as e:
                    last = f"{e.code().name}: {e.details()}"
                    if e.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        break  # refused: waiting will not help
                await asyncio.sleep(0.25)
        raise ValueError(f"gRPC {target}: no OK answer in {time.monotonic() - t0:.0f} s ({last})")

    return run(main())
