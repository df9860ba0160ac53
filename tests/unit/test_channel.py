"""A link of messages over a real Unix socket (serving/core/channel.py): messages arrive whole
however the bytes are cut, and a link that reconnects (a front to a new engine) starts clean."""

from __future__ import annotations

import asyncio
from pathlib import Path

from serving.core.channel import Frames, Link


def _run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_messages_arrive_whole_and_in_order_over_a_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    got: list[list[bytes]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_message(link: Link, frames: Frames) -> None:
            got.append([bytes(f) for f in frames])
            if len(got) == 200:
                done.set_result(None)

        server = await loop.create_unix_server(lambda: Link(on_message), path)
        client = Link(lambda link, frames: None)
        await loop.create_unix_connection(lambda: client, path)
        for i in range(200):  # big ones are cut by the socket into several reads
            client.send([b"m", i.to_bytes(4, "little"), bytes([i % 251]) * (i * 997)])
        await asyncio.wait_for(done, 10)
        client.close()
        server.close()

    _run(main())
    assert [m[1] for m in got] == [i.to_bytes(4, "little") for i in range(200)]
    assert all(m[2] == bytes([i % 251]) * (i * 997) for i, m in enumerate(got))


def test_a_link_that_reconnects_drops_what_the_dead_peer_left_unfinished(tmp_path: Path) -> None:
    """The engine killed while writing an answer leaves part of a message in the front's link;
    the new engine's first message must not be read after it."""
    path = str(tmp_path / "s.sock")
    got: list[list[bytes]] = []
    lost: list[Link] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        arrived = loop.create_future()
        whole, sink = Link(lambda link, frames: None), _Sink()
        whole.transport = sink  # type: ignore[assignment]
        whole.send([b"answer", b"x" * 100])
        message = bytes(sink.data)

        def dying(link: Link) -> None:  # the first engine: half a message, then gone
            link.transport.write(message[: len(message) // 2])  # type: ignore[union-attr]
            link.transport.close()  # type: ignore[union-attr]

        first = await loop.create_unix_server(lambda: _OnConnect(dying), path)

        def on_message(link: Link, frames: Frames) -> None:
            got.append([bytes(f) for f in frames])
            arrived.set_result(None)

        front = Link(on_message, lost.append)
        await loop.create_unix_connection(lambda: front, path)
        for _ in range(100):
            if lost:
                break
            await asyncio.sleep(0.01)
        assert lost and not front.open and not got
        first.close()
        await first.wait_closed()

        def serving(link: Link) -> None:  # the new engine: whole messages
            link.send([b"answer", b"y" * 100])

        second = await loop.create_unix_server(lambda: _OnConnect(serving), path)
        await loop.create_unix_connection(lambda: front, path)
        await asyncio.wait_for(arrived, 5)
        front.close()
        second.close()

    _run(main())
    assert got == [[b"answer", b"y" * 100]]


class _Sink:
    """A transport that keeps what is written (to make a message's bytes)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.data += data


class _OnConnect(Link):
    def __init__(self, act: object) -> None:
        super().__init__(lambda link, frames: None)
        self.act = act

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.act(self)  # type: ignore[operator]
