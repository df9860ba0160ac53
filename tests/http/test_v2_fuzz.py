"""Hypothesis against the v2 REST routes of a real server: whatever a client sends (JSON or
binary framing, any path under /v2), the answer is never a 5xx other than 503/504, every error
has the protocol's body, and the server keeps answering correctly."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.http.server import Server, same_bits

pytestmark = pytest.mark.slow

NAMES = ["item_id", "category_id", "shop_id", "item_id.lengths", "shop_id.lengths", "x", ""]
DATATYPES = ["INT64", "INT32", "FP32", "BYTES", "int64", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
ids = st.lists(st.integers(-3, 5002), max_size=12)


@st.composite
def tensor(draw: Any) -> dict[str, Any]:
    data = draw(ids | json_values)
    t: dict[str, Any] = {
        "name": draw(st.sampled_from(NAMES) | st.text(max_size=8)),
        "datatype": draw(st.sampled_from(DATATYPES)),
        "shape": draw(
            st.just([len(data)] if isinstance(data, list) else [1])
            | st.lists(st.integers(-2, 20), max_size=3)
            | json_values
        ),
    }
    if draw(st.booleans()):
        t["data"] = data
    if draw(st.integers(0, 4)) == 0:
        t["parameters"] = draw(
            st.fixed_dictionaries({"binary_data_size": st.integers(-1, 64) | json_values})
        )
    return t


@st.composite
def infer_body(draw: Any) -> tuple[bytes, dict[str, str]]:
    doc: dict[str, Any] = {"inputs": draw(st.lists(tensor(), max_size=4) | json_values)}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": st.sampled_from(NAMES) | json_values}))
            | json_values
        )
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(json_values)}
    if draw(st.integers(0, 5)) == 0:
        doc = draw(json_values)
    head = json.dumps(doc).encode()  # big ints and NaN too: a server must refuse them cleanly
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "", "text/plain"]))}
    tail = b""
    if draw(st.booleans()):
        tail = draw(st.binary(max_size=64))
        length = draw(
            st.just(str(len(head))) | st.text("x9-", max_size=4) | st.integers(-5, 500).map(str)
        )
        headers["Inference-Header-Content-Length"] = length
    return head + tail, headers


def check(r: httpx.Response) -> None:
    assert r.status_code < 500 or r.status_code in (503, 504), r.text
    if r.status_code >= 400:
        assert set(r.json()) == {"error"}, r.text


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=infer_body())
def test_any_infer_body_gets_a_4xx_or_an_answer(server: Server, body: Any) -> None:
    content, headers = body
    headers = {k: v for k, v in headers.items() if v}
    check(server.client.post("/v2/models/small/infer", content=content, headers=headers))


segments = st.sampled_from(["models", "small", "versions", "1", "ready", "infer", "health"])
# "." and ".." are dot-segments: a client resolves them (RFC 3986) before sending, so
# "/v2/.." is a request for "/", not a path under /v2.
free_text = st.text("abc%._-", max_size=5).filter(lambda s: s not in (".", ".."))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    parts=st.lists(segments | free_text, max_size=5),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
)
def test_any_path_under_v2_gets_an_answer_in_the_protocol(
    server: Server, parts: list[str], method: str
) -> None:
    path = "/v2/" + "/".join(parts)
    check(server.client.request(method, path, content=b"{}"))


def test_the_server_is_still_exact_after_the_fuzzing(server: Server) -> None:
    doc = {"inputs": [{"name": "item_id", "datatype": "INT64", "shape": [2], "data": [7, 4999]}]}
    r = server.client.post("/v2/models/small/infer", json=doc)
    out = r.json()["outputs"][0]
    rows = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    assert same_bits(rows, server.rows("item_id", [7, 4999]))
    served_5xx = [
        line
        for line in server.client.get("/metrics").text.splitlines()
        if line.startswith("seqserve_requests_total") and 'status="5' in line and "/v2" in line
    ]
    assert not served_5xx, served_5xx
