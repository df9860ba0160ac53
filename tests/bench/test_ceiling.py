"""The HTTP ceiling as the bench runs it: a real uvicorn process that answers stored bytes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from serving.bench import ceiling, load

JSON = b'{"embeddings": {"item_id": [[0.5, -1.25]]}}'
MSGPACK = b"\x81\xaaembeddings\x80"


def test_the_ceiling_answers_the_stored_bytes_and_stops(tmp_path: Path) -> None:
    proc, url = ceiling.start({"json": JSON, "msgpack": MSGPACK}, tmp_path)
    try:
        big = b"x" * 300_000  # a body in several chunks: read whole before the answer
        with httpx.Client(base_url=url, timeout=10) as client:
            for body in (big, b"{}", big):  # keep-alive: one connection, three requests
                r = client.post("/predictions/demo", content=body, headers=load.HEADERS["json"])
                assert (r.status_code, r.content) == (200, JSON)
                assert r.headers["content-type"] == "application/json"
                r = client.post("/anything", content=body, headers=load.HEADERS["msgpack"])
                assert (r.status_code, r.content) == (200, MSGPACK)
                assert r.headers["content-type"] == "application/msgpack"
                assert r.headers["content-length"] == str(len(MSGPACK))
        assert proc.poll() is None
    finally:
        load.stop_server(proc)
    assert proc.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/ping", timeout=2)


def test_one_format_answers_every_request(tmp_path: Path) -> None:
    proc, url = ceiling.start({"msgpack": MSGPACK}, tmp_path)
    try:
        r = httpx.post(url, content=b"{}", headers=load.HEADERS["json"], timeout=10)
        assert (r.status_code, r.content) == (200, MSGPACK)
    finally:
        load.stop_server(proc)


def test_a_ceiling_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(load.NotReady, match="exited with 2"):
        ceiling.start({}, tmp_path)  # no answer: its argument parser refuses
