"""Every status of docs/http.md from a real request, in the contract's error shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.http.server import Server

pytestmark = pytest.mark.slow


def error(r: httpx.Response, status: int, kind: str, words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "type", "message"}
    assert body["code"] == status and body["type"] == kind
    assert words in body["message"], body["message"]


@pytest.fixture(scope="module")
def tight(model_path: Path) -> Iterator[Server]:
    """Small limits and a deadline no request can meet."""
    s = Server(
        model_path,
        "--max-queue",
        "4",
        "--max-body-bytes",
        "2000",
        "--max-ids-per-request",
        "50",
        "--request-timeout-s",
        "0.000001",
    )
    try:
        s.wait_ready()
        yield s
    finally:
        s.close()


def test_400s_name_the_field_and_position(server: Server) -> None:
    post = server.client.post
    error(
        post("/predictions/small", json={"features": {"item_id": [1, 5000]}}),
        400,
        "InvalidInput",
        "features.item_id[1]: id 5000 is outside [0, 5000)",
    )
    error(
        post("/predictions/small", json={"features": {"shop_id": [-1]}}),
        400,
        "InvalidInput",
        "features.shop_id[0]",
    )
    error(
        post(
            "/predictions/small",
            json={"instances": [{"features": {}}, {"features": {"nope": [1]}}]},
        ),
        400,
        "InvalidInput",
        "instances[1].features.nope: unknown feature",
    )
    error(
        post("/predictions/small", json={"features": {"item_id": [1, "2"]}}),
        400,
        "InvalidInput",
        "features.item_id[1]",
    )
    error(
        post(
            "/predictions/small", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        400,
        "InvalidInput",
        "",
    )


def test_404s(server: Server) -> None:
    error(
        server.client.post("/predictions/other", json={"features": {}}),
        404,
        "UnknownModel",
        "'other'",
    )
    error(server.client.get("/models/other"), 404, "UnknownModel", "'other'")
    error(server.client.get("/no/such/path"), 404, "NotFound", "/no/such/path")
    error(server.client.post("/predictions/small/extra", json={}), 404, "NotFound", "/extra")


def test_405_names_the_allowed_method(server: Server) -> None:
    r = server.client.get("/predictions/small")
    error(r, 405, "MethodNotAllowed", "/predictions/small")
    assert r.headers["allow"] == "POST"
    assert server.client.post("/ping").status_code == 405  # FastAPI's routes say so too


def test_415(server: Server) -> None:
    r = server.client.post("/predictions/small", content=b"x", headers={"Content-Type": "text/csv"})
    error(r, 415, "UnsupportedMediaType", "text/csv")


def test_413_body_and_ids(tight: Server) -> None:
    big = {"features": {"item_id": list(range(1000))}}
    error(
        tight.client.post("/predictions/small", json=big), 413, "PayloadTooLarge", "over the limit"
    )
    many = {"features": {"item_id": [1] * 30, "clicked_item_id": [2] * 30}}
    error(tight.client.post("/predictions/small", json=many), 413, "PayloadTooLarge", "50")


def test_503_queue_full_with_retry_after(tight: Server) -> None:
    r = tight.client.post(
        "/predictions/small", json={"instances": [{"features": {"item_id": [1]}}] * 8}
    )
    error(r, 503, "QueueFull", "")
    assert r.headers["Retry-After"] == "1"


def test_504_past_the_deadline(tight: Server) -> None:
    error(
        tight.client.post("/predictions/small", json={"features": {"item_id": [1]}}),
        504,
        "DeadlineExceeded",
        "",
    )


def test_503_until_the_ranks_are_warm(model_path: Path) -> None:
    # The distributed engine's ranks take seconds to warm; the local engine is ready within
    # milliseconds of the socket opening, too soon to catch. /ping reads `engine.ready` alike.
    s = Server(model_path, "--engine", "distributed")
    try:
        seen = s.wait_ready()
        assert 503 in seen, f"/ping never said 503 while warming: {seen}"
        assert seen[-1] == 200
    finally:
        s.close()
