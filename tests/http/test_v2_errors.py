"""Every error of docs/protocols.md through both transports: the native statuses with the
protocol's `{"error": ...}` body on REST, the mapped status codes on gRPC. The gRPC requests are
built with tritonclient's own protocol messages, so they can be as malformed as a client's."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.http.server import Server

pytestmark = pytest.mark.slow

TOKEN = "v2-token"
# An input: (name, datatype, shape, values).
Input = tuple[str, str, list[int], list[Any]]
NUMPY = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4"}

# (case, model, inputs, HTTP status, gRPC code, words the message holds)
CASES: list[tuple[str, str, list[Input], int, str, str]] = [
    ("unknown model", "nope", [("item_id", "INT64", [1], [1])], 404, "NOT_FOUND",
     "model 'nope' is not served here"),
    ("unknown feature", "small", [("color", "INT64", [1], [1])], 400, "INVALID_ARGUMENT",
     "inputs[0]: unknown input 'color'"),
    ("id out of range", "small", [("item_id", "INT64", [2], [1, 5000])], 400, "INVALID_ARGUMENT",
     "inputs[0] 'item_id'[1]: id 5000 is outside [0, 5000)"),
    ("negative id", "small", [("shop_id", "INT32", [1], [-1])], 400, "INVALID_ARGUMENT",
     "inputs[0] 'shop_id'[0]: id -1 is outside [0, 30)"),
    ("bad datatype", "small", [("item_id", "FP32", [1], [1.0])], 400, "INVALID_ARGUMENT",
     "datatype 'FP32' is not supported"),
    ("bad shape", "small", [("item_id", "INT64", [1, 2], [1, 2])], 400, "INVALID_ARGUMENT",
     "shape [1, 2] is not supported; expected [n]"),
    ("data not the shape", "small", [("item_id", "INT64", [3], [1, 2])], 400, "INVALID_ARGUMENT",
     "inputs[0] 'item_id'"),
    ("lengths off", "small",
     [("item_id", "INT64", [3], [1, 2, 3]), ("item_id.lengths", "INT64", [2], [1, 1])],
     400, "INVALID_ARGUMENT", "lengths sum to 2, but 'item_id' has 3 ids"),
    ("lengths missing", "small",
     [("item_id", "INT64", [1], [1]), ("item_id.lengths", "INT32", [1], [1]),
      ("shop_id", "INT64", [1], [1])],
     400, "INVALID_ARGUMENT", "'shop_id' has no 'shop_id.lengths'"),
    ("lengths disagree", "small",
     [("item_id", "INT64", [2], [1, 2]), ("item_id.lengths", "INT64", [2], [1, 1]),
      ("shop_id", "INT64", [1], [1]), ("shop_id.lengths", "INT64", [1], [1])],
     400, "INVALID_ARGUMENT", "1 sequences, but 'item_id.lengths' has 2"),
]  # fmt: skip


def rest_body(inputs: list[Input], binary: bool) -> tuple[bytes, dict[str, str]]:
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, datatype, shape, values in inputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = np.asarray(values, dtype=NUMPY[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values
        entries.append(entry)
    head = httpx.Request("POST", "/", json={"inputs": entries}).content
    if not binary:
        return head, {"Content-Type": "application/json"}
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return head + b"".join(blobs), headers


def grpc_request(model: str, inputs: list[Input]) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape, values in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(np.asarray(values, dtype=NUMPY[datatype]).tobytes())
    return request


def rest_error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.text


def grpc_error(stub: Any, request: Any, code: str, words: str, **kw: Any) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request, timeout=30, **kw)
    assert e.value.code().name == code, e.value.details()
    assert words in (e.value.details() or ""), e.value.details()


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def start(model_path: Path, *flags: str) -> Server:
    s = Server(model_path, *flags)
    s.wait_ready()
    return s


@pytest.fixture(scope="module")
def tight(model_path: Path) -> Iterator[Server]:
    s = start(model_path, "--max-body-bytes", "2000", "--max-ids-per-request", "50",
              "--max-instances", "2", "--request-timeout-s", "0.000001")  # fmt: skip
    yield s
    s.close()


@pytest.fixture(scope="module")
def guarded(model_path: Path) -> Iterator[Server]:
    s = start(model_path, "--auth-token", TOKEN)
    yield s
    s.close()


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rest_errors(server: Server, case: tuple[Any, ...], binary: bool) -> None:
    _, model, inputs, status, _, words = case
    body, headers = rest_body(inputs, binary)
    r = server.client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    rest_error(r, status, words)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_grpc_errors(stub: Any, case: tuple[Any, ...]) -> None:
    _, model, inputs, _, code, words = case
    grpc_error(stub, grpc_request(model, inputs), code, words)


def test_rest_body_errors(server: Server) -> None:
    post = server.client.post
    rest_error(post("/v2/models/small/infer", content=b"{not json"), 400, "not valid JSON")
    rest_error(post("/v2/models/small/infer", json={"inputs": 3}), 400, "inputs: expected")
    body, headers = rest_body([("item_id", "INT64", [2], [1, 2])], binary=True)
    rest_error(
        post("/v2/models/small/infer", content=body + b"xx", headers=headers),
        400,
        "2 bytes of binary data that no input's binary_data_size accounts for",
    )
    rest_error(
        post("/v2/models/small/infer", content=body[:-3], headers=headers),
        400,
        "runs past the body's binary data",
    )
    rest_error(
        post("/v2/models/small/infer", content=b"{}", headers={"Content-Type": "text/csv"}),
        415,
        "content type 'text/csv' is not supported",
    )
    doc = {"inputs": [{"name": "item_id", "datatype": "INT64", "shape": [1], "data": [1]}],
           "outputs": [{"name": "shop_id"}]}  # fmt: skip
    rest_error(post("/v2/models/small/infer", json=doc), 400, "'shop_id' is not an output")


def test_limits_and_deadline_on_both_transports(tight: Server) -> None:
    big = [("item_id", "INT64", [300], list(range(300)))]  # 2400 bytes of ids: over the body
    body, headers = rest_body(big, binary=True)
    r = tight.client.post("/v2/models/small/infer", content=body, headers=headers)
    rest_error(r, 413, "over the limit of 2000")
    many = [("item_id", "INT64", [60], list(range(60)))]  # 480 bytes, but 60 ids > 50
    body, headers = rest_body(many, binary=True)
    r = tight.client.post("/v2/models/small/infer", content=body, headers=headers)
    rest_error(r, 413, "60 ids; the limit is 50")
    three = [("item_id", "INT64", [3], [1, 2, 3]), ("item_id.lengths", "INT64", [3], [1, 1, 1])]
    body, headers = rest_body(three, binary=True)
    r = tight.client.post("/v2/models/small/infer", content=body, headers=headers)
    rest_error(r, 413, "3 sequences; the limit is 2")
    ok = [("item_id", "INT64", [1], [1])]
    body, headers = rest_body(ok, binary=True)
    r = tight.client.post("/v2/models/small/infer", content=body, headers=headers)
    rest_error(r, 504, "deadline")
    with grpc.insecure_channel(tight.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        grpc_error(stub, grpc_request("small", big), "RESOURCE_EXHAUSTED", "")
        grpc_error(stub, grpc_request("small", many), "RESOURCE_EXHAUSTED", "60 ids")
        grpc_error(stub, grpc_request("small", three), "RESOURCE_EXHAUSTED", "3 sequences")
        grpc_error(stub, grpc_request("small", ok), "DEADLINE_EXCEEDED", "deadline")


def test_the_token_on_both_transports_but_not_on_health(guarded: Server) -> None:
    c = guarded.client
    body, headers = rest_body([("item_id", "INT64", [1], [1])], binary=True)
    for path in ("/v2/models/small/infer", "/v2/models/small", "/v2"):
        method = c.post if path.endswith("infer") else c.get
        extra = {"content": body, "headers": headers} if path.endswith("infer") else {}
        rest_error(method(path, **extra), 401, "Authorization: Bearer")  # type: ignore[operator]
    auth = {**headers, "Authorization": f"Bearer {TOKEN}"}
    assert c.post("/v2/models/small/infer", content=body, headers=auth).status_code == 200
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/small/ready"):
        assert c.get(path).status_code == 200, path
    request = grpc_request("small", [("item_id", "INT64", [1], [1])])
    with grpc.insecure_channel(guarded.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        grpc_error(stub, request, "UNAUTHENTICATED", "Authorization: Bearer")
        grpc_error(
            stub, request, "UNAUTHENTICATED", "Bearer", metadata=[("authorization", "Bearer no")]
        )
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="small"))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.ModelInfer(request, metadata=[("authorization", f"Bearer {TOKEN}")])
        assert reply.outputs[0].name == "item_id" and len(reply.raw_output_contents[0]) == 64
        assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="small")).ready


def test_grpc_starts_and_stops_with_the_server(model_path: Path) -> None:
    s = start(model_path)
    try:
        with grpc.insecure_channel(s.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = stub.ModelInfer(grpc_request("small", [("shop_id", "INT64", [1], [3])]))
            assert reply.raw_output_contents[0] == s.rows("shop_id", [3]).tobytes()
        assert s.terminate() == 0, s.output()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", s.grpc_port)) != 0  # nobody listens now
        assert "Traceback" not in s.output()
    finally:
        s.close()
