"""A lean HTTP/1.1 load client: N keep-alive connections on one asyncio loop.

Why not httpx: on a small machine the client shares the cores with the server it measures, so
its CPU per request is part of every figure. httpx from N threads cost 0.6-0.9 ms of client CPU
per request here; this client writes each request as one pre-built buffer and reads the answer
by Content-Length, a few tens of microseconds. It speaks only what the bench needs: POST with a
fixed body, keep-alive, answers with Content-Length or chunked, reconnecting when the server
closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

# (start, latency in s, HTTP status or the error's name, index of the body sent)
Result = tuple[float, float, int | str, int]
# Called with (client, its n-th 200 counted from 0, start, body index, response body, response
# head: the status line and headers as sent, without the blank line; b"" where there is none).
OnOk = Callable[[int, int, float, int, bytes, bytes], None]


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client reads it."""


def requests_for(
    target: str,
    bodies: Sequence[bytes],
    headers: dict[str, str],
    body_headers: Sequence[Mapping[str, str]] | None = None,
) -> list[bytes]:
    """Each body as the whole bytes of a POST to `target`, headers included: `headers`, then
    the body's own from `body_headers` (one map per body) when given."""
    url = urlsplit(target)
    path = url.path or "/"
    head = f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body_headers is not None and len(body_headers) != len(bodies):
        raise ValueError(f"{len(body_headers)} header maps for {len(bodies)} bodies")
    own = [
        "".join(f"{k}: {v}\r\n" for k, v in h.items())
        for h in (body_headers if body_headers is not None else [{}] * len(bodies))
    ]
    return [
        f"{head}{extra}Content-Length: {len(b)}\r\n\r\n".encode() + b
        for b, extra in zip(bodies, own, strict=True)
    ]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool, bytes]:
    """(status, body, whether the server keeps the connection, head) of one answer; the head
    is its status line and headers, as sent."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    length, chunked, keep = -1, False, parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep = value.strip().lower() != b"close"
    if chunked:
        body = await _read_chunked(reader)
    elif length >= 0:
        body = await reader.readexactly(length)
    else:  # no length: the body runs to the end of the connection
        body, keep = await reader.read(), False
    return int(parts[1]), body, keep, head[:-4]


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are sent to us
            return b"".join(out)
        out.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _client(
    k: int,
    host: str,
    port: int,
    requests: Sequence[bytes],
    end: float,
    timeout: float,
    results: list[Result],
    on_ok: OnOk | None,
) -> None:
    n = 0
    i = k * 7919  # a different walk through the pool per client
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while (t0 := time.perf_counter()) < end:
        i = (i + 1) % len(requests)
        status: int | str
        body = head = b""
        try:
            async with asyncio.timeout(timeout):
                if conn is None:
                    conn = await asyncio.open_connection(host, port, limit=1 << 20)
                reader, writer = conn
                writer.write(requests[i])
                status, body, keep, head = await read_response(reader)
            if not keep:
                writer.close()
                conn = None
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ProtocolError) as e:
            status = type(e).__name__
            if conn is not None:
                conn[1].close()
                conn = None
        results.append((t0, time.perf_counter() - t0, status, i))
        if status == 200 and on_ok is not None:
            on_ok(k, n, t0, i, body, head)
            n += 1
    if conn is not None:
        conn[1].close()


async def run_clients(
    target: str,
    bodies: Sequence[bytes],
    headers: dict[str, str],
    clients: int,
    end: float,
    *,
    on_ok: OnOk | None = None,
    timeout: float = 60,
    tick: float = 0,
    on_tick: Callable[[list[Result]], None] | None = None,
    body_headers: Sequence[Mapping[str, str]] | None = None,
) -> list[Result]:
    """`clients` connections post `bodies` to `target` until perf_counter() passes `end`.

    Every 200 goes to `on_ok` when given. With `on_tick`, it is called every `tick` seconds
    with the results so far (a progress line). `body_headers`: each body's own headers."""
    url = urlsplit(target)
    if url.scheme != "http" or url.hostname is None:
        raise ValueError(f"{target}: only http:// urls are supported")
    requests = requests_for(target, bodies, headers, body_headers)
    results: list[Result] = []
    work = [
        _client(k, url.hostname, url.port or 80, requests, end, timeout, results, on_ok)
        for k in range(clients)
    ]
    return await gather(work, results, tick, on_tick)


async def gather(
    work: Sequence[Coroutine[Any, Any, None]],
    results: list[Result],
    tick: float = 0,
    on_tick: Callable[[list[Result]], None] | None = None,
) -> list[Result]:
    """Run the clients' coroutines, which append to `results`, to their end; `on_tick` is
    called every `tick` seconds meanwhile with the results so far."""
    done = asyncio.ensure_future(asyncio.gather(*work))
    while on_tick is not None and tick > 0 and not done.done():
        await asyncio.wait({done}, timeout=tick)
        if not done.done():
            on_tick(results)
    await done
    return results


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run the client on uvloop where it is installed (a pinned dependency): its event loop
    costs less CPU per request than asyncio's, and that CPU is taken from the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
