"""A real TorchServe running our handler honours the same contract as the FastAPI front."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.http.server import Server, rows_of, same_bits, write_small_model
from tests.torchserve.ts import TorchServe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("java") is None, reason="java is absent: TorchServe needs Java 17"
    ),
]

BODIES = [
    {"features": {"item_id": [3, 17, 17, 0, 4999], "category_id": [5], "shop_id": []}},
    {"features": {"clicked_item_id": [4998]}},
    {
        "instances": [
            {"features": {"item_id": [1]}},
            {"features": {}},
            {"features": {"shop_id": [29]}},
        ]
    },
]
BAD = [
    ({"features": {"item_id": [1, 5000]}}, "features.item_id[1]: id 5000 is outside [0, 5000)"),
    ({"features": {"nope": [1]}}, "features.nope: unknown feature"),
]


# local: one worker drives every rank (the default); distributed: torchrun ranks (tp).
@pytest.fixture(scope="module", params=["local", "distributed"])
def torchserve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchServe]:
    # The same weights as `model_path` (seeded), with the engine the spec names.
    model = write_small_model(tmp_path_factory.mktemp("model"), engine=request.param)
    # A 300 ms batch window makes concurrent requests meet in one TorchServe batch.
    ts = TorchServe(model, tmp_path_factory.mktemp("ts") / "run", "--max-batch-delay-ms", "300")
    try:
        ts.wait_ready()
        yield ts
    finally:
        ts.close()


def test_answers_are_byte_for_byte_those_of_the_fastapi_front(
    torchserve: TorchServe, server: Server
) -> None:
    assert torchserve.client is not None
    for body in BODIES:
        a = torchserve.client.post("/predictions/small", json=body)
        b = server.client.post("/predictions/small", json=body)
        assert a.status_code == b.status_code == 200, a.text
        assert a.content == b.content
        assert a.headers["content-type"].startswith("application/json")
    packed = msgpack.packb(BODIES[0])
    headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    a = torchserve.client.post("/predictions/small", content=packed, headers=headers)
    b = server.client.post("/predictions/small", content=packed, headers=headers)
    assert a.status_code == 200 and a.content == b.content
    emb = msgpack.unpackb(a.content)["embeddings"]["item_id"]
    rows = np.frombuffer(emb["data"], dtype="<f4").reshape(emb["shape"])
    assert same_bits(rows, server.rows("item_id", BODIES[0]["features"]["item_id"]))


def test_errors_have_the_contract_shape(torchserve: TorchServe, server: Server) -> None:
    assert torchserve.client is not None
    for body, message in BAD:
        a = torchserve.client.post("/predictions/small", json=body)
        b = server.client.post("/predictions/small", json=body)
        assert a.status_code == b.status_code == 400
        assert a.json() == b.json() and message in a.json()["message"]


def test_a_bad_request_in_a_batch_fails_alone_and_batches_form(
    torchserve: TorchServe, model_path: Path
) -> None:
    client = torchserve.client
    assert client is not None
    weights = load_file(str(model_path.parent / "weights.safetensors"))
    rng = np.random.default_rng(1)
    bodies = [{"features": {"item_id": rng.integers(0, 5000, 5).tolist()}} for _ in range(12)]
    bodies[5] = BAD[0][0]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: client.post("/predictions/small", json=b), bodies))
    for i, (body, r) in enumerate(zip(bodies, responses, strict=True)):
        if i == 5:
            assert r.status_code == 400 and r.json()["type"] == "InvalidInput"
            continue
        assert r.status_code == 200, r.text
        ids = body["features"]["item_id"]
        assert same_bits(
            np.asarray(r.json()["embeddings"]["item_id"]), rows_of(weights, "item_id", ids)
        )
    sizes = [int(n) for n in re.findall(r"seqserve batch size (\d+)", torchserve.model_log())]
    assert max(sizes) > 1, f"TorchServe never batched: {sizes}"
