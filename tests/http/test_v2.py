"""The Open Inference Protocol v2 (docs/protocols.md) against a real `seqserve serve`, through
the real clients: tritonclient over HTTP (JSON and binary tensors) and over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.http.server import Server, same_bits

pytestmark = pytest.mark.slow

Clients = dict[str, Any]
IDS = {
    "item_id": [0, 17, 17, 4999, 3],
    "category_id": [5, 49],
    "shop_id": [29],
}


@pytest.fixture(scope="module")
def clients(server: Server) -> Iterator[Clients]:
    both = {
        "http": th.InferenceServerClient(server.url.removeprefix("http://")),
        "grpc": tg.InferenceServerClient(server.grpc_url),
    }
    yield both
    for c in both.values():
        c.close()


def inputs(
    transport: str,
    ids: dict[str, list[int]],
    dtype: type = np.int64,
    binary: bool = True,
    lengths: dict[str, list[int]] | None = None,
) -> list[Any]:
    mod = th if transport == "http" else tg
    tensors = []
    named = dict(ids) | {f"{f}.lengths": v for f, v in (lengths or {}).items()}
    for name, values in named.items():
        data = np.asarray(values, dtype=dtype)
        t = mod.InferInput(name, [len(values)], "INT64" if dtype == np.int64 else "INT32")
        if transport == "http":
            t.set_data_from_numpy(data, binary_data=binary)
        else:
            t.set_data_from_numpy(data)
        tensors.append(t)
    return tensors


def outputs(transport: str, names: list[str], binary: bool = True) -> list[Any]:
    if transport == "http":
        return [th.InferRequestedOutput(n, binary_data=binary) for n in names]
    return [tg.InferRequestedOutput(n) for n in names]


TRANSPORTS = [("http", True), ("http", False), ("grpc", True)]  # (transport, binary tensors)


def test_health_and_metadata(clients: Clients) -> None:
    for transport, c in clients.items():
        assert c.is_server_live() and c.is_server_ready(), transport
        assert c.is_model_ready("small") and c.is_model_ready("small", "1"), transport
        meta = c.get_server_metadata()
        meta = meta if transport == "http" else {"extensions": list(meta.extensions)}
        assert "binary_tensor_data" in meta["extensions"]
        model = c.get_model_metadata("small")
        if transport == "grpc":
            model = {
                "versions": list(model.versions),
                "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                           for t in model.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                            for t in model.outputs],
            }  # fmt: skip
        assert model["versions"] == ["1"]
        features = ["item_id", "clicked_item_id", "category_id", "shop_id"]
        assert model["inputs"] == [
            {"name": f, "datatype": "INT64", "shape": [-1]} for f in features
        ]
        assert model["outputs"] == [
            {"name": f, "datatype": "FP32", "shape": [-1, 16]} for f in features
        ]


@pytest.mark.parametrize("transport,binary", TRANSPORTS)
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_every_row_is_exact(
    server: Server, clients: Clients, transport: str, binary: bool, dtype: type
) -> None:
    c = clients[transport]
    result = c.infer(
        "small",
        inputs(transport, IDS, dtype, binary),
        outputs=outputs(transport, list(IDS), binary) if transport == "http" else None,
        request_id="r-1",
    )
    for feature, ids in IDS.items():
        assert same_bits(result.as_numpy(feature), server.rows(feature, ids)), feature
    response = result.get_response()
    version = response["model_version"] if transport == "http" else response.model_version
    rid = response["id"] if transport == "http" else response.id
    assert (version, rid) == ("1", "r-1")


@pytest.mark.parametrize("transport,binary", TRANSPORTS)
def test_lengths_cut_several_sequences(
    server: Server, clients: Clients, transport: str, binary: bool
) -> None:
    ids = {"item_id": [1, 2, 3, 4, 5, 6, 7], "category_id": [8, 9, 10]}
    lengths = {"item_id": [3, 0, 4], "category_id": [1, 1, 1]}
    result = clients[transport].infer("small", inputs(transport, ids, np.int64, binary, lengths))
    for feature, values in ids.items():
        assert same_bits(result.as_numpy(feature), server.rows(feature, values)), feature
    # the same sequences through the native route, concatenated, are the same bytes
    instances = [
        {"features": {"item_id": [1, 2, 3], "category_id": [8]}},
        {"features": {"item_id": [], "category_id": [9]}},
        {"features": {"item_id": [4, 5, 6, 7], "category_id": [10]}},
    ]
    native = server.client.post(
        "/predictions/small",
        content=msgpack.packb({"instances": instances}),
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    answers = msgpack.unpackb(native.content)["predictions"]
    for feature in ids:
        joined = b"".join(a["embeddings"][feature]["data"] for a in answers)
        assert result.as_numpy(feature).astype("<f4").tobytes() == joined


@pytest.mark.parametrize("transport,binary", TRANSPORTS)
def test_outputs_select_among_the_features_named(
    server: Server, clients: Clients, transport: str, binary: bool
) -> None:
    result = clients[transport].infer(
        "small",
        inputs(transport, IDS, np.int64, binary),
        outputs=outputs(transport, ["shop_id", "item_id"], binary),
    )
    assert result.as_numpy("category_id") is None
    assert same_bits(result.as_numpy("shop_id"), server.rows("shop_id", IDS["shop_id"]))
    assert same_bits(result.as_numpy("item_id"), server.rows("item_id", IDS["item_id"]))


def test_native_rest_and_grpc_answers_are_identical(server: Server, clients: Clients) -> None:
    native = server.client.post(
        "/predictions/small",
        content=msgpack.packb({"features": IDS}),
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    assert native.status_code == 200 and native.headers["x-model-version"] == "1"
    embeddings = msgpack.unpackb(native.content)["embeddings"]
    answers = {
        f"{t}-{'binary' if b else 'json'}": clients[t].infer("small", inputs(t, IDS, binary=b))
        for t, b in TRANSPORTS
    }
    for feature in IDS:
        want = embeddings[feature]["data"]
        for name, result in answers.items():
            got = result.as_numpy(feature)
            assert got.dtype == np.float32 and got.astype("<f4").tobytes() == want, name


def test_the_versions_forms(server: Server, clients: Clients) -> None:
    c = server.client
    assert c.get("/v2/models/small/versions/1").json()["name"] == "small"
    assert c.get("/v2/models/small/versions/1/ready").status_code == 200
    r = c.get("/v2/models/small/versions/2")
    assert r.status_code == 404 and "version '2' is not served" in r.json()["error"]
    for transport, client in clients.items():
        result = client.infer("small", inputs(transport, {"shop_id": [1]}), model_version="1")
        assert same_bits(result.as_numpy("shop_id"), server.rows("shop_id", [1]))
        with pytest.raises(InferenceServerException, match="version '7' is not served"):
            client.infer("small", inputs(transport, {"shop_id": [1]}), model_version="7")


def test_health_needs_no_model_and_unknown_paths_are_404(server: Server) -> None:
    c = server.client
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").json() == {"ready": True}
    for path in ("/v2/nothing", "/v2/models/small/configs", "/v2/models"):
        r = c.get(path)
        assert r.status_code == 404 and set(r.json()) == {"error"}, path
    r = c.get("/v2/models/small/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_shared_memory_is_off_without_the_flag(server: Server, clients: Clients) -> None:
    assert "system_shared_memory" not in server.client.get("/v2").json()["extensions"]
    r = server.client.post(
        "/v2/systemsharedmemory/region/r/register", json={"key": "/k", "byte_size": 8}
    )
    assert r.status_code == 403 and "--allow-shared-memory" in r.json()["error"]
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        clients["grpc"].get_system_shared_memory_status()
    body = {
        "inputs": [
            {
                "name": "item_id",
                "datatype": "INT64",
                "shape": [1],
                "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 8},
            }
        ]
    }
    r = server.client.post("/v2/models/small/infer", json=body)
    assert r.status_code == 403 and "--allow-shared-memory" in r.json()["error"]


def test_an_integer_past_64_bits_is_named_as_such_not_as_a_float(server: Server) -> None:
    body = b'{"inputs": [{"name": "item_id", "datatype": "INT64", "shape": [1], '
    body += b'"data": [99999999999999999999999]}]}'
    r = server.client.post(
        "/v2/models/small/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"] == "inputs[0] 'item_id'[0]: 99999999999999999999999 is not an INT64"
