"""A client that leaves before its batch forms is dropped before compute."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.http.server import Server

pytestmark = pytest.mark.slow


def test_a_disconnected_caller_is_not_computed(model_path: Path) -> None:
    s = Server(model_path, "--max-delay-ms", "1000", "--max-gap-ms", "1000")
    try:
        s.wait_ready()
        before = s.metric("seqserve_batch_sequences_count")
        body = b'{"features": {"item_id": [1, 2, 3]}}'
        head = (
            f"POST /predictions/small HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.sendall(head + body)
            time.sleep(0.3)  # queued: its batch waits up to 1 s for company
        time.sleep(1.5)
        assert s.metric("seqserve_batch_sequences_count") == before
        assert (
            s.client.post("/predictions/small", json={"features": {"shop_id": [1]}}).status_code
            == 200
        )
        assert s.metric("seqserve_batch_sequences_count") == before + 1
    finally:
        s.close()
