"""The engine process of a `--workers N` host (serving/commands/host.py): the engine, the
batcher, versions and `--updates-dir`, serving the fronts over a Unix socket
(serving/core/engine_server.py).
SIGTERM (sent once the fronts have stopped) answers what is queued, closes the engine, prints
what the host answered, and exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from multiprocessing.connection import Connection

from serving.config import ModelSpec
from serving.settings import ServerSettings


def run_engine(
    spec: ModelSpec | None,
    settings: ServerSettings,
    rundir: str,
    ready: Connection,
    parent_pid: int,
) -> None:
    """Settle the spec (None: the demo, for the GPUs this process sees), check its weights,
    send it to the parent (the fronts start with it), then serve."""
    from serving.commands.demo import demo_spec
    from serving.commands.lifeline import die_with_parent
    from serving.engine import weights
    from serving.engine.devices import gpu_count
    from serving.errors import SeqServeError

    die_with_parent(parent_pid)
    try:
        spec = spec or demo_spec(gpu_count())
        weights.check(spec)  # a bad weights file fails here, in one line, before any rank
    except SeqServeError as e:
        print(f"seqserve: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    ready.send(spec)
    raise SystemExit(asyncio.run(_serve(spec, settings, rundir, ready)))


async def _serve(spec: ModelSpec, settings: ServerSettings, rundir: str, ready: Connection) -> int:
    from serving.core.engine_server import EngineServer
    from serving.core.metrics import summary
    from serving.core.service import Service
    from serving.engine.factory import for_settings

    service = Service(settings, for_settings(spec, settings))
    server = EngineServer(service, rundir)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failures: list[BaseException] = []

    def on_ready() -> None:
        gc.collect()
        gc.freeze()  # the weights' Python objects stay out of every collection's scan
        ready.send(True)

    def on_fatal(error: BaseException) -> None:
        failures.append(error)
        print(f"seqserve: error: {error}", file=sys.stderr, flush=True)
        stop.set()

    starting = asyncio.create_task(service.start(on_ready, on_fatal))
    await stop.wait()
    if not starting.done():
        await service.abandon_start()
    await starting
    await service.stop()
    totals = await server.totals(fresh=False)
    server.close()
    print(summary(totals.snapshot), flush=True)
    return 1 if failures else 0
