"""--updates-dir: deltas applied in name order, once each (also across a restart), a bad one
moved aside with its reason while serving goes on."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from tests.http.server import Server
from tests.http.test_updates import marked
from tests.unit.test_updates import bf16_delta

pytestmark = pytest.mark.slow


def publish(folder: Path, name: str, version_mark: int, ids: list[int]) -> None:
    """As a training job would: write under another name, then rename (atomic)."""
    body = save(
        {"items.ids": np.asarray(ids, dtype=np.int64), "items.rows": marked(version_mark, ids)}
    )
    part = folder / (name + ".part")
    part.write_bytes(body)
    part.rename(folder / name)


def until(check: Callable[[], bool], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "not within the timeout"
        time.sleep(0.05)


def item_rows(server: Server, ids: list[int]) -> np.ndarray:
    r = server.client.post("/predictions/small", json={"features": {"item_id": ids}})
    return np.asarray(r.json()["embeddings"]["item_id"], dtype=np.float32)


def test_the_folder_applies_in_name_order_once_and_rejects_with_a_reason(
    model_path: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "updates"
    folder.mkdir()
    # Published out of name order; b must win on id 0, being later in name order.
    publish(folder, "0002-b.safetensors", 20, [0, 1])
    publish(folder, "0001-a.safetensors", 10, [0, 2])
    (folder / "0003-c.safetensors").write_bytes(b"not a safetensors file")
    (folder / "0003-d.safetensors").write_bytes(bf16_delta())  # a dtype numpy lacks
    (folder / "0004-d.safetensors.part").write_bytes(b"half written, never read")
    server = Server(model_path, "--updates-dir", str(folder))
    try:
        server.wait_ready()
        until(lambda: (folder / "rejected" / "0003-d.safetensors").exists())
        assert (folder / "rejected" / "0003-c.safetensors").exists()
        assert server.client.get("/models/small").json()["version"] == 3
        assert np.array_equal(item_rows(server, [0, 1]), marked(20, [0, 1]))
        assert np.array_equal(item_rows(server, [2]), marked(10, [2]))
        assert sorted(p.name for p in (folder / "applied").iterdir()) == [
            "0001-a.safetensors",
            "0002-b.safetensors",
        ]
        reason = (folder / "rejected" / "0003-c.safetensors.reason").read_text()
        assert reason.startswith("delta: not a readable safetensors file")
        assert (folder / "0004-d.safetensors.part").exists()
        assert server.metric('seqserve_weight_updates_total{kind="delta",outcome="applied"}') == 2
    finally:
        server.close()
    # A restart starts from the model's weights and does not apply anything twice.
    again = Server(model_path, "--updates-dir", str(folder))
    try:
        again.wait_ready()
        time.sleep(1.2)  # two rounds of the folder's poll
        assert again.client.get("/models/small").json()["version"] == 1
        assert np.array_equal(item_rows(again, [0]), again.rows("item_id", [0]))
        publish(folder, "0005-e.safetensors", 30, [3])
        until(lambda: again.client.get("/models/small").json()["version"] == 2)
        assert np.array_equal(item_rows(again, [3]), marked(30, [3]))
    finally:
        again.close()
