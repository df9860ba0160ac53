"""The realistic demo model over real HTTP: dims 16 to 256, int8 and fp16 tables beside fp32,
answered exactly as TorchRec's quantized collections answer, and its memory in /models."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from serving.commands.demo import REALISTIC, write_model
from serving.config import load_spec
from serving.engine import weights
from tests.http.server import ROOT, Server
from tests.reference import expected

pytestmark = pytest.mark.slow

REQUESTS = [
    {"item_id": [3, 17, 17, 0, 99_999], "tag_id": [9_999, 5], "position": [0, 1, 2, 511]},
    {"clicked_item_id": [42], "brand_id": [19_999, 7], "category_id": [4_999, 0, 3]},
    {"category_id": [], "tag_id": [0]},
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("realistic"), REALISTIC)


@pytest.fixture(scope="module")
def served(model: Path) -> Iterator[Server]:
    s = Server(model)
    try:
        s.wait_ready()
        yield s
    finally:
        s.close()


def want(model: Path) -> list[dict[str, np.ndarray]]:
    spec = load_spec(model)
    reqs = [{f: np.asarray(ids, dtype=np.int64) for f, ids in r.items()} for r in REQUESTS]
    return [
        {k: v.numpy() for k, v in rows.items()}
        for rows in expected(spec, weights.full_tables(spec), reqs)
    ]


def test_json_msgpack_and_v2_answers_equal_torchrecs_quantized_rows(
    served: Server, model: Path
) -> None:
    reference = want(model)
    body = {"instances": [{"features": r} for r in REQUESTS]}
    as_json = served.client.post("/predictions/realistic", json=body).json()["predictions"]
    packed = served.client.post(
        "/predictions/realistic",
        content=msgpack.packb(body),
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    as_msgpack = msgpack.unpackb(packed.content)["predictions"]
    for i, rows in enumerate(reference):
        for f, w in rows.items():
            got = np.asarray(as_json[i]["embeddings"][f], dtype=np.float32).reshape(w.shape)
            assert np.array_equal(got.view(np.uint32), w.view(np.uint32)), (i, f, "json")
            e = as_msgpack[i]["embeddings"][f]
            assert e["shape"] == list(w.shape)
            got = np.frombuffer(e["data"], dtype="<f4").reshape(w.shape)
            assert np.array_equal(got.view(np.uint32), w.view(np.uint32)), (i, f, "msgpack")
        v2 = served.client.post(
            "/v2/models/realistic/infer",
            json={
                "inputs": [
                    {"name": f, "datatype": "INT64", "shape": [len(ids)], "data": ids}
                    for f, ids in REQUESTS[i].items()
                ]
            },
        ).json()
        for out in v2["outputs"]:
            w = rows[out["name"]]
            assert out["shape"] == list(w.shape)
            got = np.asarray(out["data"], dtype=np.float32).reshape(w.shape)
            assert np.array_equal(got.view(np.uint32), w.view(np.uint32)), (i, out["name"], "v2")


def test_models_reports_each_tables_dtype_and_bytes_per_device(served: Server) -> None:
    spec = served.client.get("/models/realistic").json()
    tables = {t["name"]: t for t in spec["tables"]}
    assert {n: (t["embedding_dim"], t["dtype"]) for n, t in tables.items()} == {
        "items": (128, "int8"),
        "tags": (256, "int8"),
        "brands": (64, "fp16"),
        "categories": (32, "fp16"),
        "positions": (16, "fp32"),
    }
    # items: 100k rows, int8, both ranks' shards packed into one table on the one CPU: 128
    # columns + 4 bytes of scale and bias per row.
    assert tables["items"]["bytes"] == 100_000 * (128 + 4)
    assert tables["brands"]["bytes"] == 20_000 * 64 * 2  # fp16: 2 bytes a column
    assert tables["positions"]["bytes"] == 512 * 16 * 4
    (cpu,) = spec["devices"]
    assert cpu["tables"]["positions"] == 512 * 16 * 4 and cpu["tables"]["items"] == 100_000 * 132
    assert cpu["bytes"] == sum(t["bytes"] for t in tables.values())
    # Every table whole, a kernel per width, each table read in its own dtype.
    assert {"width": 128, "dtypes": ["int8"], "shards": 4, "tables": ["items"]} in cpu["kernels"]
    fp32 = sum(t["num_embeddings"] * t["embedding_dim"] * 4 for t in tables.values())
    assert sum(t["bytes"] for t in tables.values()) < 0.35 * fp32


def test_the_distributed_engine_refuses_it_with_one_line(model: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "serving.commands.cli", "serve", "--model", str(model)]
        + ["--engine", "distributed", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert (
        "model 'realistic' on the distributed engine: table 'items': dtype int8 needs the "
        in (lines[0])
    )


def test_reference_really_differs_from_float32(model: Path) -> None:
    # The int8 answers are the quantized rows, not the file's float32 rows.
    spec = load_spec(model)
    rows = weights.full_tables(spec)["items"][[3, 17]]
    assert not torch.equal(torch.from_numpy(want(model)[0]["item_id"][:2]), rows)
