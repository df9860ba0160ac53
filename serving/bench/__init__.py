"""`seqserve bench`: HTTP and gRPC load on the fronts with a long-tailed request mix, exactness
checks, in-process reference lines, results.json and plot.png.

    mix        the request mix (lengths, ids, subsets) and the pre-encoded request pool
    load       fronts on free ports with their auth, their first answer and stop
    wire       the lean asyncio HTTP/1.1 client that drives the load
    v2         Open Inference Protocol v2 bodies (REST binary, gRPC) and their answers read back
    rpc        the gRPC client that drives the v2-grpc load (grpc.aio, pre-serialized bodies)
    cpu        CPU per request and resident memory of a server's processes, by kind, from /proc
    check      answers compared bit for bit with the model's weights
    reference  the unsharded EmbeddingCollection and one core's index_select, in process
    ceiling    the HTTP ceiling: a bare uvicorn app answering a stored answer, its own process
    report     level metrics, results.json, the table and the plot
    options    the subcommand's flags; run: the subcommand itself

The names below come from `load` on first use, so building seqserve's parser imports no
HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.bench.load import (
        FRONTS,
        HEADERS,
        ROOT,
        NotReady,
        first_answer,
        free_port,
        start_server,
        stop_server,
    )

__all__ = [
    "FRONTS",
    "HEADERS",
    "ROOT",
    "NotReady",
    "first_answer",
    "free_port",
    "start_server",
    "stop_server",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from serving.bench import load

        return getattr(load, name)
    raise AttributeError(f"module 'serving.bench' has no attribute {name!r}")
