"""One front process of a `--workers N` host (serving/commands/host.py): HTTP (native and v2
REST) and v2 gRPC on the host's ports, over the engine process. Torch-free: it imports only
the fronts and the core (tests/unit/test_layers.py checks), so it costs no more memory than
the server's HTTP code, whatever the tables' size.
"""

from __future__ import annotations

import gc
import signal

import uvicorn

from serving.config import ModelSpec
from serving.core.remote import RemoteService
from serving.fronts.app import create_app
from serving.fronts.connections import http_protocol
from serving.fronts.server import open_files_for, shared_listener
from serving.settings import ServerSettings


def run_front(
    spec: ModelSpec, settings: ServerSettings, rundir: str, index: int, parent_pid: int
) -> None:
    from serving.commands.lifeline import die_with_parent

    die_with_parent(parent_pid)
    service = RemoteService(settings, spec, rundir, index)
    failed = False

    def on_fatal(error: BaseException) -> None:  # the gRPC port could not be bound
        nonlocal failed
        failed = True
        print(f"seqserve: error: front {index}: {error}", flush=True)
        server.should_exit = True

    app = create_app(service, on_fatal=on_fatal)
    open_files_for(settings.front_connections)
    config = uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        http=http_protocol(settings.read_timeout_s, settings.front_connections),
    )
    server = uvicorn.Server(config)
    listener = shared_listener(settings.host, settings.port)
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn's own handlers drain; exit 0 after
        signal.signal(sig, lambda *_: None)
    gc.collect()
    gc.freeze()  # what lives as long as the process stays out of the collector's scans
    server.run(sockets=[listener])
    raise SystemExit(1 if failed else 0)
