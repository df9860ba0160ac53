"""A front waiting for its workers says, every --join-timeout-s, who is missing and what to
run and open; it is no silent wait (on loopback, no processes)."""

from __future__ import annotations

import logging
import threading

import pytest

from serving.engine.distributed.nodes import listen
from serving.errors import EngineStartError


def test_the_wait_for_workers_names_the_missing_nodes_and_the_ports(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nodes = listen(("127.0.0.1", 0), b"key", 3, 6, on_join=lambda: None)
    port = nodes.address[1]
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    with caplog.at_level(logging.WARNING, "seqserve"), pytest.raises(EngineStartError):
        nodes.await_workers(60, stop, remind=0.5)
    notes = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert notes, caplog.text
    assert notes[0].startswith("still waiting for node(s) [1, 2] after ")
    assert f"--master-port {port} --node-rank N --nnodes 3" in notes[0]
    assert f"TCP ports {port} and {port + 1} of 127.0.0.1 must be open to them" in notes[0]
