"""The bench's gRPC client against an in-process grpc.aio server answering ModelInfer raw."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from serving.bench import rpc, v2, wire

Handler = Callable[[bytes, Any], Awaitable[bytes]]


async def echo(body: bytes, context: Any) -> bytes:
    return body.upper()


def drive(handler: Handler, clients: int = 3, seconds: float = 0.3, **kw: Any) -> dict[str, Any]:
    """Run the clients against a server answering with `handler`; what they saw, and the
    peers (client connections) and metadata the server saw."""
    peers: set[str] = set()
    metadata: list[dict[str, str]] = []

    async def handle(body: bytes, context: Any) -> bytes:
        peers.add(context.peer())
        metadata.append(dict(context.invocation_metadata() or ()))
        return await handler(body, context)

    async def main() -> dict[str, Any]:
        server = grpc.aio.server()
        method = grpc.unary_unary_rpc_method_handler(handle)  # no serializers: raw bytes
        service, name = v2.INFER_METHOD.strip("/").split("/")
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service, {name: method})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        seen: list[tuple[int, bytes, bytes]] = []
        bodies = [b"zero", b"one-one", b""]

        def on_ok(client: int, n: int, t0: float, index: int, content: bytes, head: bytes) -> None:
            seen.append((index, content, head))

        try:
            results = await rpc.run_clients(
                f"127.0.0.1:{port}",
                bodies,
                kw.pop("auth", {}),
                clients,
                time.perf_counter() + seconds,
                on_ok=on_ok,
                **kw,
            )
        finally:
            await server.stop(None)
        return {"results": results, "seen": seen, "bodies": bodies}

    out = wire.run(main())
    return {**out, "peers": peers, "metadata": metadata}


def test_answers_come_back_raw_with_a_connection_per_client() -> None:
    out = drive(echo, auth={"Authorization": "Bearer s3cret"})
    assert len(out["results"]) > 10 and {r[2] for r in out["results"]} == {200}
    assert all(content == out["bodies"][i].upper() for i, content, _ in out["seen"])
    assert {head for _, _, head in out["seen"]} == {b""}
    assert len(out["seen"]) == len(out["results"])
    assert len(out["peers"]) == 3  # one channel, one TCP connection, per client
    assert {m.get("authorization") for m in out["metadata"]} == {"Bearer s3cret"}


def test_a_shared_channel_is_one_connection() -> None:
    out = drive(echo, clients=4, channels="shared")
    assert {r[2] for r in out["results"]} == {200} and len(out["peers"]) == 1


def test_failed_calls_are_counted_by_their_code() -> None:
    async def busy(body: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "queue full")
        raise AssertionError("abort raises")

    out = drive(busy, clients=1, seconds=0.2)
    assert {r[2] for r in out["results"]} == {"UNAVAILABLE"} and out["seen"] == []


def test_a_slow_answer_times_out() -> None:
    async def slow(body: bytes, context: Any) -> bytes:
        import asyncio

        await asyncio.sleep(1)
        return body

    out = drive(slow, clients=1, seconds=0.05, timeout=0.1)
    assert [r[2] for r in out["results"]] == ["DEADLINE_EXCEEDED"]


def test_nothing_listening_is_unavailable_and_first_answer_says_so() -> None:
    from serving.bench.load import free_port

    target = f"127.0.0.1:{free_port()}"
    results = wire.run(rpc.run_clients(target, [b"x"], {}, 1, time.perf_counter() + 0.1))
    assert results and {r[2] for r in results} == {"UNAVAILABLE"}
    with pytest.raises(ValueError, match=f"gRPC {target}: no OK answer .*UNAVAILABLE"):
        rpc.first_answer(target, b"x", {}, timeout=0.5)
    with pytest.raises(ValueError, match="channels"):
        wire.run(rpc.run_clients(target, [b"x"], {}, 1, 0.0, channels="many"))
