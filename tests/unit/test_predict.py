"""The predictions route as plain ASGI, driven with fake receive/send and a fake engine: the
cases a real server cannot be made to show on demand (a bug of ours, a client gone mid-wait)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from serving.commands.demo import demo_spec
from serving.core.metrics import Metrics
from serving.core.service import Service
from serving.fronts.asgi import CONNECTION
from serving.fronts.native import ROUTE, Predictions, model_of
from serving.settings import defaults

SPEC = demo_spec()
BODY = orjson.dumps({"features": {"item_id": [1, 2]}})
Process = Callable[[list[Any]], list[Any]]


class Engine:
    """What the service needs of an engine: a spec, readiness and a forward."""

    kind = "fake"
    ready = True
    spec = SPEC

    def __init__(self, process: Process):
        self.forward = process

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


def rows(items: list[Any]) -> list[Any]:
    dims = {f: t.embedding_dim for f, t in SPEC.table_of().items()}
    return [{f: np.zeros((len(ids), dims[f]), np.float32) for f, ids in r.items()} for r in items]


class Connection:
    """What our HTTP protocol puts in a request's scope: its client's presence."""

    def __init__(self, disconnected: bool):
        self.disconnected = disconnected


def call(
    method: str,
    process: Process = rows,
    messages: list[dict[str, Any]] | None = None,
    client_left: bool = False,
) -> tuple[list[dict[str, Any]], Metrics]:
    """One request through `Predictions`: what it sent, and its metrics."""

    async def main() -> tuple[list[dict[str, Any]], Metrics]:
        service = Service(defaults(max_delay_ms=1), Engine(process))  # type: ignore[arg-type]
        service.batcher.start()
        inbox = list(messages or [{"type": "http.request", "body": BODY, "more_body": False}])
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if inbox:
                return inbox.pop(0)
            await asyncio.sleep(3600)  # the client stays, silent
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        route = Predictions(service)
        scope = {
            "type": "http", "method": method, "path": f"/predictions/{SPEC.name}",
            "headers": [(b"content-type", b"application/json")],
            "extensions": {CONNECTION: Connection(client_left)},
        }  # fmt: skip
        await asyncio.wait_for(route(scope, receive, send, SPEC.name), timeout=5)
        await service.batcher.stop()
        return sent, service.metrics

    return asyncio.run(main())


def reply(sent: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    start, body = sent
    return start["status"], dict(start["headers"]), orjson.loads(body["body"])


def test_an_answer_is_sent_with_its_length_and_counted() -> None:
    sent, metrics = call("POST")
    status, headers, doc = reply(sent)
    assert status == 200
    assert len(doc["embeddings"]["item_id"]) == 2
    assert int(headers[b"content-length"]) == len(sent[1]["body"])
    assert metrics.answered(ROUTE) == {"200": 1}


def test_a_bug_of_ours_is_a_500_in_the_contract_shape() -> None:
    def broken(items: list[Any]) -> list[Any]:
        raise KeyError("a bug")

    sent, metrics = call("POST", broken)
    status, headers, doc = reply(sent)
    assert (status, doc["code"], doc["type"]) == (500, 500, "InternalError")
    assert "KeyError" in doc["message"] and headers[b"content-type"] == b"application/json"
    assert metrics.answered(ROUTE) == {"500": 1}


def test_other_methods_get_405_naming_post() -> None:
    sent, _ = call("GET")
    status, headers, doc = reply(sent)
    assert (status, doc["type"], headers[b"allow"]) == (405, "MethodNotAllowed", b"POST")


def test_only_predictions_paths_are_this_route() -> None:
    assert model_of(f"/predictions/{SPEC.name}") == SPEC.name
    for path in ("/ping", "/predictions/", "/predictions/a/b", "/models/demo", "/v2/models/x"):
        assert model_of(path) == "", path


def test_a_client_gone_before_its_batch_is_counted_and_not_answered() -> None:
    computed: list[Any] = []

    def slow(items: list[Any]) -> list[Any]:
        computed.append(items)
        return rows(items)

    sent, metrics = call("POST", slow, client_left=True)
    assert sent == [] and computed == []  # dropped before its batch ran
    assert metrics.answered(ROUTE) == {"499": 1}


def test_a_body_in_several_chunks_is_joined() -> None:
    half = len(BODY) // 2
    messages = [
        {"type": "http.request", "body": BODY[:half], "more_body": True},
        {"type": "http.request", "body": BODY[half:], "more_body": False},
    ]
    sent, _ = call("POST", messages=messages)
    assert reply(sent)[0] == 200
