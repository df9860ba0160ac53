"""The Open Inference Protocol v2 over REST (docs/protocols.md), as plain ASGI on /v2.

Every /v2 path is answered here, errors included, so they all carry the protocol's body
`{"error": "..."}` with the statuses of the native contract. JSON tensors and the binary tensor
data extension work both ways: a body may be a JSON header of `Inference-Header-Content-Length`
bytes followed by the inputs' raw data, and any output may be sent the same way
(`serving.fronts.v2_body`).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from serving.core.host import Host
from serving.errors import (
    NotSupported,
    SeqServeError,
    http_status,
)
from serving.fronts import v2, v2_body, v2_tools
from serving.fronts.asgi import (
    Reply,
    error_headers,
    gone_of,
    headers_of,
    read_body,
    respond,
)
from serving.fronts.shm import SharedMemory, check_fits

HEADER_LENGTH, JSON, JSON_HEADERS = v2_body.HEADER_LENGTH, v2_body.JSON, v2_body.JSON_HEADERS


def error_reply(status: int, message: str, retry_after: float = 1.0) -> Reply:
    """The protocol's error body: {"error": message}."""
    return status, orjson.dumps({"error": message}), error_headers(status, JSON, retry_after)


def internal_error(message: str) -> Reply:
    return error_reply(500, message)


def ok(doc: Any, status: int = 200) -> Reply:
    return status, orjson.dumps(doc), list(JSON_HEADERS)


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


class V2Rest:
    """Answers every path under /v2; `serving.fronts.app.Front` routes here."""

    def __init__(self, service: Host, server_version: str, shm: SharedMemory | None = None):
        self.service = service
        self.server_version = server_version
        self.retry_after = service.settings.batch.retry_after_s
        self.shm = shm or SharedMemory(False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        parts = path.rstrip("/").split("/")[2:]
        route, method, model, version = _route(parts)

        async def answer() -> Reply | None:
            if route is None:
                return error_reply(404, f"no such route: {path}")
            if method and scope["method"] != method:
                status, body, headers = error_reply(
                    405, f"method {scope['method']} is not allowed on {path}; use {method}"
                )
                return status, body, [*headers, (b"allow", method.encode())]
            try:
                return await self.answer(route, scope, receive, model, version)
            except SeqServeError as e:
                return error_reply(http_status(e), str(e), self.retry_after)

        await respond(send, self.service.metrics, route or "/v2/other", answer, internal_error)

    async def answer(
        self, route: str, scope: Scope, receive: Receive, model: str, version: str
    ) -> Reply | None:
        service = self.service
        headers = headers_of(scope)
        if route == "/v2/health/live":
            return ok({"live": True})
        if route == "/v2/health/ready":
            return ok({"ready": service.ready}, 200 if service.ready else 503)
        if route == "/v2/models/{model}/ready":
            service.check_model(model, version)
            return ok({"name": model, "ready": service.ready}, 200 if service.ready else 503)
        if route != "/v2/models/{model}/infer":
            service.authorize(headers.get(b"authorization"))
            return await self.tools(route, receive, headers, model, version)
        service.admit(headers.get(b"authorization"), model, version)
        limits = service.limits
        body = await read_body(receive, headers.get(b"content-length"), limits.max_body_bytes)
        if body is None:
            return None
        decoded = v2_body.decode(body, headers, self.shm)
        inference = v2.inference(decoded.inputs, service.rows, limits)
        names = v2.selected([(n, w) for n, w, _, _ in decoded.requested], inference.features)
        binary = {n: b for n, _, b, _ in decoded.requested if b is not None}
        targets = {n: t for n, _, _, t in decoded.requested if t is not None}
        if targets:
            check_fits(targets, inference.sequences, service.spec)
        predicted = await service.predict(inference.sequences, gone_of(scope))
        if predicted is None:
            return None
        outputs = {n: v2.rows(predicted.answers, n) for n in names}
        chosen = {n: binary.get(n, decoded.binary_default) for n in names}
        return v2_body.encode(
            decoded.id, service.spec.name, predicted.version, outputs, chosen, targets, self.shm
        )

    async def tools(
        self, route: str, receive: Receive, headers: dict[bytes, bytes], name: str, version: str
    ) -> Reply:
        """Server and model metadata and Triton's extensions (v2_tools, shm): the token is
        checked."""
        service, shm = self.service, self.shm
        if route == "/v2":
            return ok(v2.server_metadata(self.server_version, shm.enabled))
        if route == "/v2/models/stats":
            return ok(await v2_tools.statistics(service))
        if route == "/v2/repository/index":
            body = await read_body(receive, headers.get(b"content-length"), 4096)
            only_ready = (
                v2_body.as_bool(v2_body.json_object(body or b"{}").get("ready"), "ready") or False
            )
            index = v2_tools.repository_index(
                service.spec, service.version, service.ready, only_ready
            )
            return ok(index)
        if route.startswith("/v2/repository/models/"):
            raise NotSupported(v2_tools.LOAD_UNLOAD.format(model=service.spec.name))
        if route == "/v2/unsupported":
            raise NotSupported(
                "this Triton extension is not served; served: binary tensor data, model "
                "configuration, model repository (index), statistics and system shared memory "
                "(docs/protocols.md#routes)"
            )
        if route.startswith("/v2/systemsharedmemory/"):
            return await self.shared_memory(route, receive, headers, name)
        service.check_model(name, version)
        if route == "/v2/models/{model}":
            return ok(v2.model_metadata(service.spec, service.version))
        if route == "/v2/models/{model}/config":
            return ok(v2_tools.model_config(service.spec))
        assert route == "/v2/models/{model}/stats", route
        return ok(await v2_tools.statistics(service))

    async def shared_memory(
        self, route: str, receive: Receive, headers: dict[bytes, bytes], name: str
    ) -> Reply:
        shm = self.shm
        shm.check_enabled()
        if route.endswith("/status"):
            return ok(shm.status(name))
        if route.endswith("/unregister"):
            shm.unregister(name)
            return ok({})
        body = await read_body(receive, headers.get(b"content-length"), 4096)
        doc = v2_body.json_object(body or b"")
        shm.register(name, doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
        return ok({})


# Triton's extensions that are not served: a clear NotSupported, not "no such route".
_UNSUPPORTED = ("cudasharedmemory", "trace", "logging")
_MODEL_ROUTES = {
    (): ("/v2/models/{model}", "GET"),
    ("ready",): ("/v2/models/{model}/ready", "GET"),
    ("infer",): ("/v2/models/{model}/infer", "POST"),
    ("config",): ("/v2/models/{model}/config", "GET"),
    ("stats",): ("/v2/models/{model}/stats", "GET"),
}
_SHM_ROUTES = {
    ("status",): ("/v2/systemsharedmemory/status", "GET"),
    ("unregister",): ("/v2/systemsharedmemory/unregister", "POST"),
    ("status", 1): ("/v2/systemsharedmemory/region/{name}/status", "GET"),
    ("register", 1): ("/v2/systemsharedmemory/region/{name}/register", "POST"),
    ("unregister", 1): ("/v2/systemsharedmemory/region/{name}/unregister", "POST"),
}


def _route(parts: list[str]) -> tuple[str | None, str, str, str]:
    """(route template, its method ("" for any), model or region name, version) of a path
    under /v2; None if unknown."""
    if not parts:
        return "/v2", "GET", "", ""
    if parts in (["health", "live"], ["health", "ready"]):
        return "/v2/" + "/".join(parts), "GET", "", ""
    if parts == ["repository", "index"]:
        return "/v2/repository/index", "POST", "", ""
    if parts[0] in _UNSUPPORTED:
        return "/v2/unsupported", "", "", ""
    if len(parts) == 4 and parts[:2] == ["repository", "models"] and parts[3] in ("load", "unload"):
        return f"/v2/repository/models/{{model}}/{parts[3]}", "POST", parts[2], ""
    if parts[0] == "systemsharedmemory":
        if len(parts) == 2:
            route, method = _SHM_ROUTES.get((parts[1],), (None, "GET"))
            return route, method, "", ""
        if len(parts) == 4 and parts[1] == "region":
            route, method = _SHM_ROUTES.get((parts[3], 1), (None, "GET"))
            return route, method, parts[2], ""
        return None, "GET", "", ""
    if parts == ["models", "stats"]:
        return "/v2/models/stats", "GET", "", ""
    if len(parts) < 2 or parts[0] != "models":
        return None, "GET", "", ""
    model, rest, version = parts[1], parts[2:], ""
    if rest[:1] == ["versions"] and len(rest) >= 2:
        version, rest = rest[1], rest[2:]
    route, method = _MODEL_ROUTES.get(tuple(rest), (None, "GET"))
    return route, method, (model if route else ""), (version if route else "")
