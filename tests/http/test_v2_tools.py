"""Triton's tools against a real `seqserve serve --model DIR --allow-shared-memory
--auth-token ...`, through tritonclient over HTTP and gRPC: the model configuration (the fields
perf_analyzer reads), the repository index, statistics that rise by exactly the requests sent,
system shared memory bit-equal to the binary answer and every bad argument refused; KServe's
SDK clients; ports taken; /docs without a CDN (docs/protocols.md#triton-extensions)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.http.server import ROOT, Server, free_port, same_bits

pytestmark = pytest.mark.slow

TOKEN = "tools-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lower-case


def auth() -> dict[str, str]:
    """A fresh copy per call: tritonclient's HTTP infer adds its own headers to the dict."""
    return dict(AUTH)


FEATURES = ["item_id", "clicked_item_id", "category_id", "shop_id"]
Clients = dict[str, Any]


@pytest.fixture(scope="module")
def tools(model_path: Path) -> Iterator[Server]:
    # --model DIR: the folder `seqserve demo-model` writes, model.yaml inside
    s = Server(model_path.parent, "--allow-shared-memory", "--auth-token", TOKEN)
    try:
        s.wait_ready()
        s.client.headers.update(AUTH)
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def clients(tools: Server) -> Iterator[Clients]:
    both = {
        "http": th.InferenceServerClient(tools.url.removeprefix("http://")),
        "grpc": tg.InferenceServerClient(tools.grpc_url),
    }
    yield both
    for c in both.values():
        c.close()


def as_json(transport: str, value: Any) -> Any:
    """tritonclient's gRPC answers as the JSON its HTTP client gives (int64s as numbers)."""
    if transport == "http":
        return value
    from google.protobuf import json_format

    doc = json_format.MessageToDict(
        value, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _ints(doc)


INT64_FIELDS = {"dims", "count", "ns", "inference_count", "execution_count", "last_inference"}
INT64_FIELDS |= {"batch_size", "byte_size", "offset"}


def _ints(doc: Any, key: str = "") -> Any:
    """protobuf's JSON writes 64-bit integers as strings; Triton's REST JSON as numbers."""
    if isinstance(doc, dict):
        return {k: _ints(v, k) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_ints(v, key) for v in doc]
    if key in INT64_FIELDS and isinstance(doc, str):
        return int(doc)
    return doc


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_model_config_holds_what_perf_analyzer_reads(clients: Clients, transport: str) -> None:
    c = clients[transport]
    config = as_json(transport, c.get_model_config("small", headers=auth()))
    config = config if transport == "http" else config["config"]
    assert config["name"] == "small" and config["backend"] == "seqserve"
    assert config["platform"] == "pytorch_torchrec"
    assert config.get("max_batch_size", 0) == 0  # no batch dimension: perf_analyzer sends [n]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    inputs = {t["name"]: t for t in config["input"]}
    assert list(inputs) == FEATURES + [f + ".lengths" for f in FEATURES]
    for name, t in inputs.items():
        assert (t["data_type"], t["dims"]) == ("TYPE_INT64", [-1]), t
        assert t.get("optional", False) == name.endswith(".lengths"), t
        assert not t.get("is_shape_tensor", False)
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        (f, "TYPE_FP32", [-1, 16]) for f in FEATURES
    ]
    for absent in ("sequence_batching", "ensemble_scheduling", "model_transaction_policy"):
        assert absent not in config  # perf_analyzer: not a sequence model, ensemble or decoupled
    assert as_json(transport, c.get_model_config("small", "1", headers=auth()))
    with pytest.raises(InferenceServerException, match="version '2' is not served"):
        c.get_model_config("small", "2", headers=auth())
    with pytest.raises(InferenceServerException, match="model 'nope' is not served"):
        c.get_model_config("nope", headers=auth())
    with pytest.raises(InferenceServerException, match="Bearer"):
        c.get_model_config("small")  # the token is needed


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_repository_index_lists_the_one_model(clients: Clients, transport: str) -> None:
    c = clients[transport]
    index = as_json(transport, c.get_model_repository_index(headers=auth()))
    index = index if transport == "http" else index["models"]
    index = [{k: v for k, v in m.items() if v != ""} for m in index]  # gRPC: reason ""
    assert index == [{"name": "small", "version": "1", "state": "READY"}]
    for call in (c.load_model, c.unload_model):
        with pytest.raises(InferenceServerException) as e:
            call("small", headers=auth())
        assert "loading and unloading models is not supported" in str(e.value)
        assert ("400" if transport == "http" else "UNIMPLEMENTED") in str(e.value)


def test_unserved_triton_extensions_say_so(tools: Server) -> None:
    for path in ("/v2/cudasharedmemory/status", "/v2/trace/setting", "/v2/logging"):
        r = tools.client.get(path)
        assert r.status_code == 400 and "extension is not served" in r.json()["error"], path
    r = tools.client.post("/v2/repository/index", json={"ready": True})
    assert r.json() == [{"name": "small", "version": "1", "state": "READY"}]
    extensions = tools.client.get("/v2").json()["extensions"]
    assert extensions == [
        "binary_tensor_data",
        "model_configuration",
        "model_repository",
        "statistics",
        "system_shared_memory",
    ]
    assert httpx.post(f"{tools.url}/v2/repository/index").status_code == 401


def stats_of(clients: Clients, transport: str) -> dict[str, Any]:
    doc = as_json(transport, clients[transport].get_inference_statistics("small", headers=auth()))
    (model,) = doc["model_stats"]
    return model


def infer(c: Any, mod: Any, ids: list[int]) -> Any:
    t = mod.InferInput("item_id", [len(ids)], "INT64")
    t.set_data_from_numpy(np.asarray(ids, dtype=np.int64))
    return c.infer("small", [t], headers=auth())


def test_statistics_rise_by_exactly_the_requests_sent(tools: Server, clients: Clients) -> None:
    before = {t: stats_of(clients, t) for t in clients}
    metric = tools.metric("seqserve_inferences_total")
    sent = 0
    for transport, mod in (("http", th), ("grpc", tg)):
        for k in range(3):
            infer(clients[transport], mod, [k, k + 1])
            sent += 1
    # a bad request is refused before the queue: not an inference, not a failure
    with pytest.raises(InferenceServerException):
        infer(clients["http"], th, [5000])
    for transport in clients:
        old, new = before[transport], stats_of(clients, transport)
        assert new["inference_count"] - old["inference_count"] == sent
        stats, prior = new["inference_stats"], old["inference_stats"]

        def rose(phase: str, field: str = "count", s: Any = stats, p: Any = prior) -> int:
            return s.get(phase, {}).get(field, 0) - p.get(phase, {}).get(field, 0)

        assert rose("success") == sent and rose("fail") == 0
        for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert rose(phase) == sent, phase
        assert rose("success", "ns") > rose("compute_infer", "ns") > 0
        assert 1 <= new["execution_count"] - old["execution_count"] <= sent
        assert new["last_inference"] >= old.get("last_inference", 0)
        batches = new["batch_stats"]
        assert (
            sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches)
            == (new["inference_count"])
        )
    assert tools.metric("seqserve_inferences_total") - metric == sent
    everything = clients["http"].get_inference_statistics(headers=auth())  # every model
    assert [m["name"] for m in everything["model_stats"]] == ["small"]


# -- system shared memory -------------------------------------------------------------------


class Regions:
    """Regions this test made in /dev/shm, destroyed at the end."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.prefix = f"seqserve-test-{os.getpid()}"

    def make(self, name: str, size: int, values: list[np.ndarray] | None = None) -> Any:
        handle = shm.create_shared_memory_region(name, f"/{self.prefix}-{name}", size)
        if values:
            shm.set_shared_memory_region(handle, values)
        self.handles.append(handle)
        return handle

    def key(self, name: str) -> str:
        return f"/{self.prefix}-{name}"

    def close(self) -> None:
        for h in self.handles:
            shm.destroy_shared_memory_region(h)


@pytest.fixture
def regions(clients: Clients) -> Iterator[Regions]:
    r = Regions()
    try:
        yield r
    finally:
        clients["http"].unregister_system_shared_memory(headers=auth())
        r.close()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_shared_memory_inputs_and_outputs_are_the_binary_answer(
    tools: Server, clients: Clients, regions: Regions, transport: str
) -> None:
    c, mod = clients[transport], (th if transport == "http" else tg)
    ids = np.array([3, 17, 17, 4999, 0, 42], dtype=np.int64)
    lengths = np.array([2, 0, 4], dtype=np.int32)
    shops = np.array([1, 2, 29], dtype=np.int64)
    shop_lengths = np.array([1, 1, 1], dtype=np.int64)
    # inputs packed in one region at offsets; item rows at an offset of a second region
    regions.make("in", 200, [ids, lengths, shops, shop_lengths])
    out = regions.make("out", 64 + 6 * 64 + 3 * 64)
    c.register_system_shared_memory("in", regions.key("in"), 200, headers=auth())
    c.register_system_shared_memory("out", regions.key("out"), 64 + 9 * 64, headers=auth())
    status = as_json(transport, c.get_system_shared_memory_status(headers=auth()))
    names = {r["name"] for r in status} if transport == "http" else set(status["regions"])
    assert names == {"in", "out"}
    layout = [("item_id", ids), ("item_id.lengths", lengths), ("shop_id", shops)]
    layout.append(("shop_id.lengths", shop_lengths))
    inputs, at = [], 0
    for name, values in layout:
        t = mod.InferInput(name, [len(values)], "INT32" if values.dtype == np.int32 else "INT64")
        t.set_shared_memory("in", values.nbytes, offset=at)
        inputs.append(t)
        at += values.nbytes
    outputs = [mod.InferRequestedOutput("item_id"), mod.InferRequestedOutput("shop_id")]
    outputs[0].set_shared_memory("out", 6 * 64, offset=64)
    outputs[1].set_shared_memory("out", 3 * 64, offset=64 + 6 * 64)
    result = c.infer("small", inputs, outputs=outputs, headers=auth())
    # the same request with binary tensors in the body
    binary = []
    for name, values in layout:
        t = mod.InferInput(name, [len(values)], "INT32" if values.dtype == np.int32 else "INT64")
        t.set_data_from_numpy(values)
        binary.append(t)
    want = c.infer("small", binary, headers=auth())
    for name, offset, n in (("item_id", 64, 6), ("shop_id", 64 + 6 * 64, 3)):
        got = shm.get_contents_as_numpy(out, np.float32, [n + offset // 64, 16])[offset // 64 :]
        assert got.tobytes() == want.as_numpy(name).tobytes(), name
        assert same_bits(got, tools.rows(name, (ids if name == "item_id" else shops).tolist()))
        output = result.get_output(name)
        params = output["parameters"] if transport == "http" else output.parameters
        region = params["shared_memory_region"]
        region = region if transport == "http" else region.string_param
        assert region == "out"
    assert shm.get_contents_as_numpy(out, np.float32, [1, 16]).tobytes() == bytes(64)  # untouched
    c.unregister_system_shared_memory("in", headers=auth())
    c.unregister_system_shared_memory(headers=auth())
    status = as_json(transport, c.get_system_shared_memory_status(headers=auth()))
    assert status in ([], {"regions": {}})


def shm_case(r: httpx.Response) -> str:
    assert r.status_code == 400, r.text
    return str(r.json()["error"])


def test_every_bad_shared_memory_argument_is_a_400_naming_it(
    tools: Server, regions: Regions, tmp_path: Path
) -> None:
    c = tools.client
    regions.make("small", 16, [np.array([1, 2], dtype=np.int64)])

    def register(name: str, key: str, byte_size: int, offset: int = 0) -> httpx.Response:
        body = {"key": key, "offset": offset, "byte_size": byte_size}
        return c.post(f"/v2/systemsharedmemory/region/{name}/register", json=body)

    outside = Path("/dev/shm") / f"{regions.prefix}-link"
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    outside.symlink_to(target)
    try:
        cases = [
            (register("a", "/../etc/passwd", 8), "names one file directly in /dev/shm"),
            (register("a", "/etc/passwd", 8), "names one file directly in /dev/shm"),
            (register("a", "/..", 8), "names one file directly in /dev/shm"),
            (register("a", f"/{regions.prefix}-nothing", 8), "No such file"),
            (register("a", f"/{regions.prefix}-link", 8), "not a symlink"),
            (register("a", regions.key("small"), 17), "runs past the end"),
            (register("a", regions.key("small"), 8, offset=9), "runs past the end"),
            (register("a", regions.key("small"), 0), "at least one byte"),
            (register("a", regions.key("small"), -1), "expected a byte count"),
            (register("a b", regions.key("small"), 8), "region name 'a b'"),
            (c.post("/v2/systemsharedmemory/region/ghost/unregister"), "no shared memory region"),
            (c.get("/v2/systemsharedmemory/region/ghost/status"), "no shared memory region"),
        ]
        for r, words in cases:
            assert words in shm_case(r), r.text
    finally:
        outside.unlink()
    assert register("s", regions.key("small"), 16).status_code == 200
    assert "already registered" in shm_case(register("s", regions.key("small"), 16))

    def infer_case(inp: dict[str, Any], out: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {
            "inputs": [{"name": "item_id", "datatype": "INT64", "shape": [2], **inp}]
        }
        if out is not None:
            body["outputs"] = [{"name": "item_id", "parameters": out}]
        return shm_case(c.post("/v2/models/small/infer", json=body))

    def at(region: str, size: int, offset: int | None = None) -> dict[str, Any]:
        p: dict[str, Any] = {"shared_memory_region": region, "shared_memory_byte_size": size}
        return p | ({"shared_memory_offset": offset} if offset is not None else {})

    good = {"parameters": at("s", 16)}
    assert "no shared memory region 'ghost'" in infer_case({"parameters": at("ghost", 16)})
    assert "runs past the end of shared memory region 's'" in infer_case(
        {"parameters": at("s", 16, 8)}
    )
    assert "runs past the end" in infer_case({"parameters": at("s", 8, 9)})
    assert "8 bytes of data; shape [2] of INT64 needs 16" in infer_case({"parameters": at("s", 8)})
    assert "needs shared_memory_region" in infer_case(
        {"data": [1, 2], "parameters": {"shared_memory_byte_size": 16}}
    )
    assert "data in shared memory and in the body" in infer_case(
        {"data": [1, 2], "parameters": at("s", 16)}
    )
    # the output's region holds 16 bytes; two rows of 16 floats are 128
    assert "output 'item_id' is 128 bytes; shared_memory_byte_size 16 cannot hold it" in (
        infer_case(good, at("s", 16))
    )
    assert "expected a byte count" in infer_case(good, at("s", -1))
    r = c.post(
        "/v2/models/small/infer",
        json={"inputs": [{"name": "item_id", "datatype": "INT64", "shape": [2], **good}]},
    )
    assert r.status_code == 200 and same_bits(
        np.asarray(r.json()["outputs"][0]["data"]).reshape(2, 16), tools.rows("item_id", [1, 2])
    )
    # the client shrinks its file after registering it: a 400, never a read past its end
    os.truncate(Path("/dev/shm") / regions.key("small").lstrip("/"), 8)
    assert "its file shrank after registration" in infer_case(good)


def test_shared_memory_errors_over_grpc_are_invalid_argument(
    tools: Server, regions: Regions
) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    regions.make("g", 16, [np.array([1, 2], dtype=np.int64)])
    with grpc.insecure_channel(tools.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        meta = (("authorization", f"Bearer {TOKEN}"),)
        with pytest.raises(grpc.RpcError) as e:
            stub.SystemSharedMemoryRegister(
                service_pb2.SystemSharedMemoryRegisterRequest(
                    name="g", key="/../etc/passwd", byte_size=8
                ),
                metadata=meta,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "directly in /dev/shm" in str(e.value.details())
        with pytest.raises(grpc.RpcError) as e:
            stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        request = service_pb2.ModelInferRequest(model_name="small")
        t = request.inputs.add(name="item_id", datatype="INT64", shape=[2])
        t.parameters["shared_memory_region"].string_param = "ghost"
        t.parameters["shared_memory_byte_size"].int64_param = 16
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request, metadata=meta)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no shared memory region 'ghost'" in str(e.value.details())


# -- KServe's SDK, the command line, /docs ----------------------------------------------------


KSERVE_CLIENTS = """
import asyncio, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

url, grpc_url, token = sys.argv[1:]
headers = {"authorization": f"Bearer {token}"}


def request():
    t = InferInput("item_id", [3], "INT64")
    t.set_data_from_numpy(np.asarray([3, 17, 4999], dtype=np.int64))
    return InferRequest(model_name="small", infer_inputs=[t])


async def both():
    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    over_rest = await rest.infer(url, request(), model_name="small", headers=headers)
    await rest.close()
    client = InferenceGRPCClient(grpc_url)
    over_grpc = await client.infer(request(), headers=list(headers.items()))
    await client.close()
    for r in (over_rest, over_grpc):
        sys.stdout.buffer.write(r.outputs[0].as_numpy().astype("<f4").tobytes())


asyncio.run(both())
"""


def test_kserves_v2_clients_import_and_answer(tools: Server) -> None:
    # In a process of its own: KServe's SDK registers the v2 protocol's messages in protobuf's
    # default pool, as tritonclient does, and the two cannot be imported in one process.
    out = subprocess.run(
        [sys.executable, "-c", KSERVE_CLIENTS, tools.url, tools.grpc_url, TOKEN],
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    want = tools.rows("item_id", [3, 17, 4999]).astype("<f4").tobytes()
    assert out.stdout == want * 2


def test_docs_name_no_external_host(tools: Server) -> None:
    page = tools.client.get("/docs")
    assert page.status_code == 200
    assert not re.findall(r"(?:src|href)=[\"']?(?:https?:)?//", page.text), page.text
    for asset in re.findall(r"(?:src|href)=[\"']([^\"']+)[\"']", page.text):
        assert tools.client.get(asset).status_code == 200, asset


def test_ports_taken_stop_the_server_in_one_line_before_anything_loads(model_path: Path) -> None:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.listen()
        b.listen()
        taken = [a.getsockname()[1], b.getsockname()[1]]
        for ports in ([taken[0], free_port()], [free_port(), taken[1]], taken):
            out = subprocess.run(
                [sys.executable, "-m", "serving.commands.cli", "serve"]
                + ["--model", str(model_path.parent), "--port", str(ports[0])]
                + ["--grpc-port", str(ports[1])],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 2 and out.stdout == "", out
            (line,) = out.stderr.splitlines()
            assert line.startswith("seqserve: error: cannot listen on 127.0.0.1: port "), line
            assert line.endswith("nothing was loaded"), line
            for port, what in zip(ports, ("HTTP", "gRPC"), strict=True):
                assert (f"port {port} ({what}" in line) == (port in taken), line
