"""The Open Inference Protocol v2 over gRPC (docs/protocols.md): `inference.GRPCInferenceService`
on `--grpc-port`, served by grpc.aio on the server's own event loop, so its calls share the
batcher with the HTTP fronts."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from serving.core.host import Host
from serving.errors import InvalidInput, NotSupported, SeqServeError, http_status
from serving.fronts import v2, v2_tools
from serving.fronts.proto import grpc_service_pb2 as pb
from serving.fronts.proto import grpc_service_pb2_grpc as pb_grpc
from serving.fronts.shm import SharedMemory, Slice, check_fits

# The one place an error of the taxonomy becomes a gRPC status (its HTTP status -> code).
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
TYPED = {"INT64": "int64_contents", "INT32": "int_contents"}  # InferTensorContents fields

Reply = TypeVar("Reply")


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: Host, server_version: str, shm: SharedMemory | None = None):
        self.service = service
        self.server_version = server_version
        self.shm = shm or SharedMemory(False)

    async def _call(
        self, method: str, context: Any, compute: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        """Run one call, counted under grpc/<method> by status code; errors become codes."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await compute()
        except SeqServeError as e:
            if isinstance(e, NotSupported):
                code = grpc.StatusCode.UNIMPLEMENTED
            else:
                code = CODES.get(http_status(e), grpc.StatusCode.INTERNAL)
            await context.abort(code, str(e))
            raise  # abort raises; this line is for the type checker
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.service.metrics.observe(f"grpc/{method}", code.name, time.perf_counter() - start)

    def _authorization(self, context: Any) -> str | None:
        if not self.service.settings.auth_token:
            return None  # an open server: no need to read the call's metadata
        return dict(context.invocation_metadata() or ()).get("authorization")

    def _authorize(self, context: Any) -> None:
        self.service.authorize(self._authorization(context))

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async def compute() -> pb.ModelReadyResponse:
            self.service.check_model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.service.ready)

        return await self._call("ModelReady", context, compute)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        async def compute() -> pb.ServerMetadataResponse:
            self._authorize(context)
            doc = v2.server_metadata(self.server_version, self.shm.enabled)
            return pb.ServerMetadataResponse(**doc)

        return await self._call("ServerMetadata", context, compute)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def compute() -> pb.ModelMetadataResponse:
            self._authorize(context)
            self.service.check_model(request.name, request.version)
            doc = v2.model_metadata(self.service.spec, self.service.version)
            return pb.ModelMetadataResponse(
                name=doc["name"],
                versions=doc["versions"],
                platform=doc["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["outputs"]],
            )

        return await self._call("ModelMetadata", context, compute)

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        async def compute() -> pb.ModelInferResponse:
            service = self.service
            service.admit(self._authorization(context), request.model_name, request.model_version)
            inference = v2.inference(_tensors(request, self.shm), service.rows, service.limits)
            names = v2.selected(
                [(o.name, f"outputs[{i}]") for i, o in enumerate(request.outputs)],
                inference.features,
            )
            targets: dict[str, Slice] = {}
            for i, o in enumerate(request.outputs):
                target = self.shm.slice(_plain(o.parameters), f"outputs[{i}]")
                if target is not None:
                    targets[o.name] = target
            check_fits(targets, inference.sequences, service.spec)
            predicted = await service.predict(
                inference.sequences, timeout_s=context.time_remaining()
            )
            assert predicted is not None  # None only for a client that left: not watched here
            reply = pb.ModelInferResponse(
                model_name=service.spec.name, model_version=str(predicted.version), id=request.id
            )
            for name in names:
                a = v2.rows(predicted.answers, name)
                output = reply.outputs.add(name=name, datatype="FP32", shape=a.shape)
                target = targets.get(name)
                if target is None:
                    reply.raw_output_contents.append(np.ascontiguousarray(a, dtype="<f4").tobytes())
                    continue
                # In shared memory: an empty entry keeps raw_output_contents one per output.
                output.parameters["shared_memory_region"].string_param = target.region.name
                size = self.shm.write_rows(target, a)
                output.parameters["shared_memory_byte_size"].int64_param = size
                if target.offset:
                    output.parameters["shared_memory_offset"].int64_param = target.offset
                reply.raw_output_contents.append(b"")
            return reply

        return await self._call("ModelInfer", context, compute)

    # -- Triton's extensions (v2_tools, shm): the token is checked -------------------------

    async def _tool(self, method: str, context: Any, compute: Callable[[], Reply]) -> Reply:
        async def guarded() -> Reply:
            self._authorize(context)
            return compute()

        return await self._call(method, context, guarded)

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        def compute() -> pb.ModelConfigResponse:
            self.service.check_model(request.name, request.version)
            config = v2_tools.as_message(v2_tools.model_config(self.service.spec), pb.ModelConfig())
            return pb.ModelConfigResponse(config=config)

        return await self._tool("ModelConfig", context, compute)

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        async def compute() -> pb.ModelStatisticsResponse:
            service = self.service
            self._authorize(context)
            if request.name or request.version:
                service.check_model(request.name, request.version)
            doc = await v2_tools.statistics(service)
            return v2_tools.as_message(doc, pb.ModelStatisticsResponse())

        return await self._call("ModelStatistics", context, compute)

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        def compute() -> pb.RepositoryIndexResponse:
            s = self.service
            index = v2_tools.repository_index(s.spec, s.version, s.ready, request.ready)
            return v2_tools.as_message({"models": index}, pb.RepositoryIndexResponse())

        return await self._tool("RepositoryIndex", context, compute)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        def compute() -> Any:
            raise NotSupported(v2_tools.LOAD_UNLOAD.format(model=self.service.spec.name))

        return await self._tool("RepositoryModelLoad", context, compute)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        def compute() -> Any:
            raise NotSupported(v2_tools.LOAD_UNLOAD.format(model=self.service.spec.name))

        return await self._tool("RepositoryModelUnload", context, compute)

    async def SystemSharedMemoryStatus(
        self, request: Any, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        def compute() -> pb.SystemSharedMemoryStatusResponse:
            regions = {r["name"]: r for r in self.shm.status(request.name)}
            return v2_tools.as_message({"regions": regions}, pb.SystemSharedMemoryStatusResponse())

        return await self._tool("SystemSharedMemoryStatus", context, compute)

    async def SystemSharedMemoryRegister(
        self, request: Any, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        def compute() -> pb.SystemSharedMemoryRegisterResponse:
            self.shm.register(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

        return await self._tool("SystemSharedMemoryRegister", context, compute)

    async def SystemSharedMemoryUnregister(
        self, request: Any, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        def compute() -> pb.SystemSharedMemoryUnregisterResponse:
            self.shm.unregister(request.name)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await self._tool("SystemSharedMemoryUnregister", context, compute)


def _tensors(request: Any, shm: SharedMemory) -> list[v2.Tensor]:
    """The request's inputs, their data from shared memory, raw_input_contents (one per
    input not in shared memory, in order) or typed contents."""
    regions = [
        shm.slice(_plain(t.parameters), f"inputs[{i}]") if t.parameters else None
        for i, t in enumerate(request.inputs)
    ]
    raw, wanted = request.raw_input_contents, sum(r is None for r in regions)
    if raw and len(raw) != wanted:
        raise InvalidInput(
            f"raw_input_contents: {len(raw)} entries for {wanted} inputs not in shared memory; "
            "give one per input, in order",
            "raw_input_contents",
        )
    tensors, at = [], 0
    for i, t in enumerate(request.inputs):
        region = regions[i]
        if region is not None:
            data: Any = region
        elif raw:
            data, at = raw[at], at + 1
        else:
            field = TYPED.get(t.datatype, "int64_contents")
            data = np.array(getattr(t.contents, field), dtype=np.int64)
        tensors.append(v2.Tensor(t.name, t.datatype, list(t.shape), data, f"inputs[{i}]"))
    return tensors


def _plain(params: Any) -> dict[str, Any]:
    """An InferParameter map as plain values."""
    return {
        k: getattr(v, v.WhichOneof("parameter_choice") or "string_param") for k, v in params.items()
    }


async def start(
    service: Host, host: str, port: int, server_version: str, shm: SharedMemory | None = None
) -> grpc.aio.Server:
    """Serve on host:port; raises OSError naming the address if it cannot be bound."""
    limits = service.limits
    server = grpc.aio.server(
        options=[
            # A message over the body limit is refused by gRPC itself: RESOURCE_EXHAUSTED.
            ("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            # A port in use is an error, not a shared listener; a host's front processes
            # share theirs (their parent checked it was free).
            ("grpc.so_reuseport", 1 if service.settings.workers > 1 else 0),
        ],
        maximum_concurrent_rpcs=service.settings.front_connections,
    )
    servicer = Servicer(service, server_version, shm)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(
            f"cannot listen for gRPC on {address}: the port is taken or the address is not this "
            "host's (see --grpc-port and --host)"
        ) from e
    await server.start()
    return server
