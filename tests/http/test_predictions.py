"""Answers over real HTTP equal the weights file's rows, bit for bit, JSON and msgpack."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from tests.http.server import Server, same_bits

pytestmark = pytest.mark.slow

REQUEST = {
    "item_id": [3, 17, 17, 0, 4999],
    "category_id": [5],
    "shop_id": [],
    "clicked_item_id": [1],
}


def test_json_single(server: Server) -> None:
    r = server.client.post("/predictions/small", json={"features": REQUEST})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    got = r.json()["embeddings"]
    assert set(got) == set(REQUEST)
    for f, ids in REQUEST.items():
        want = server.rows(f, ids)
        assert same_bits(np.asarray(got[f], dtype=np.float32).reshape(-1, 16), want), f


def test_json_instances_in_order(server: Server) -> None:
    instances = [{"features": {"item_id": [i, i + 1]}} for i in range(0, 40, 3)] + [
        {"features": {}}
    ]
    r = server.client.post("/predictions/small", json={"instances": instances})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert len(preds) == len(instances)
    for inst, pred in zip(instances, preds, strict=True):
        assert set(pred["embeddings"]) == set(inst["features"])
        for f, ids in inst["features"].items():
            assert same_bits(
                np.asarray(pred["embeddings"][f], dtype=np.float32), server.rows(f, ids)
            )


@pytest.mark.parametrize("instances", [False, True])
def test_msgpack_both_ways(server: Server, instances: bool) -> None:
    features = {"clicked_item_id": [9, 9, 4998], "shop_id": [29, 0]}
    payload = {"instances": [{"features": features}] * 2} if instances else {"features": features}
    r = server.client.post(
        "/predictions/small",
        content=msgpack.packb(payload),
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    body = msgpack.unpackb(r.content)
    answers = [p["embeddings"] for p in body["predictions"]] if instances else [body["embeddings"]]
    for emb in answers:
        for f, ids in features.items():
            e = emb[f]
            assert e["dtype"] == "float32" and e["shape"] == [len(ids), 16]
            rows = np.frombuffer(e["data"], dtype="<f4").reshape(e["shape"])
            assert same_bits(rows, server.rows(f, ids))


def test_model_spec_as_served(server: Server) -> None:
    spec = server.client.get("/models/small").json()
    assert spec["world_size"] == 2 and spec["device"] == "cpu" and spec["engine"] == "local"
    tables = {t["name"]: t for t in spec["tables"]}
    assert tables["categories"]["embedding_dim"] == 16
    assert tables["categories"]["shards"] == [
        {"rank": 1, "columns": [0, 4], "device": "cpu"},
        {"rank": 0, "columns": [4, 8], "device": "cpu"},
        {"rank": 0, "columns": [8, 12], "device": "cpu"},
        {"rank": 1, "columns": [12, 16], "device": "cpu"},
    ]
    assert tables["shops"]["sharding"] == "table_wise"
    # Where each shard lives: both ranks on the one CPU, whose shards of each table are packed
    # into the whole table (width 16): one kernel for all 9 shards; every weight byte once.
    assert spec["pack"] == "device"
    (cpu,) = spec["devices"]
    assert cpu["device"] == "cpu" and cpu["ranks"] == [0, 1]
    assert [(k["width"], k["shards"]) for k in cpu["kernels"]] == [(16, 9)]
    assert cpu["bytes"] == (5000 + 50 + 30) * 16 * 4
    assert server.client.get("/docs").status_code == 200
    assert "/predictions/{model}" in server.client.get("/openapi.json").json()["paths"]
