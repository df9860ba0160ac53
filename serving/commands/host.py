"""`seqserve serve --workers N`: a host's processes, supervised.

The parent starts one engine process (the devices, the weights, the batcher) and N front
processes (HTTP and gRPC on the same ports, torch-free), all with `spawn` (neither CUDA nor gRPC
survive a fork), and watches them: a front that dies is started again while the others serve;
an engine that dies after it was ready is started again (the fronts answer 503 meanwhile); an
engine that fails before it was ready stops the host with its error (a bad spec would only
fail again). SIGTERM or SIGINT stops the fronts first (each finishes what it has in flight),
then the engine, and exits 0. Every child dies with the parent, even a SIGKILLed one
(PR_SET_PDEATHSIG), so a restart finds the ports free.

The parent never imports torch (370 MB it would hold for nothing): the engine process settles
the spec (the demo's depends on the GPUs it sees) and checks the weights, then sends the spec
on its pipe; the fronts start with it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess

from serving.config import ModelSpec
from serving.settings import ServerSettings

POLL_S = 0.1
QUICK_S = 2.0  # a front that dies this soon after its start, twice in a row, cannot start


def say(message: str) -> None:
    print(f"seqserve: {message}", file=sys.stderr, flush=True)


class Host:
    def __init__(self, spec: ModelSpec | None, settings: ServerSettings):
        self.spec = spec  # None: the demo, settled by the engine process
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        self.rundir = tempfile.mkdtemp(prefix="seqserve-")
        self.stopping = False
        # The engine sends the spec it serves, then True once it is ready, on this pipe.
        self.ready: Connection

    def start_engine(self) -> SpawnProcess:
        from serving.commands.engine_process import run_engine

        # A pipe, not an Event: a semaphore held by a SIGKILLed engine would leak.
        self.ready, said_ready = self.context.Pipe(duplex=False)
        p = self.context.Process(
            target=run_engine,
            args=(self.spec, self.settings, self.rundir, said_ready, os.getpid()),
            name="seqserve-engine",
        )
        p.start()
        said_ready.close()  # the engine's end: EOF here once it is gone
        return p

    def start_front(self, index: int) -> SpawnProcess:
        from serving.commands.front import run_front

        p = self.context.Process(
            target=run_front,
            args=(self.spec, self.settings, self.rundir, index, os.getpid()),
            name=f"seqserve-front-{index}",
        )
        p.start()
        return p

    def run(self) -> int:
        from serving.fronts.server import banner

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        settings = self.settings
        name = f"'{self.spec.name}'" if self.spec else "the demo"
        print(
            f"seqserve: starting an engine process for {name} under {settings.workers} front "
            "processes ...",
            flush=True,
        )
        engine = self.start_engine()
        fronts: dict[int, SpawnProcess] = {}
        started: dict[int, float] = {}
        quick_deaths = dict.fromkeys(range(settings.workers), 0)
        was_ready = announced = False
        code = 0
        while not self.stopping:
            if was_ready:
                time.sleep(POLL_S)
            elif self.ready.poll(POLL_S):
                said = self._heard()
                if isinstance(said, ModelSpec) and not fronts:
                    self.spec = said
                    for i in range(settings.workers):
                        fronts[i], started[i] = self.start_front(i), time.monotonic()
                elif said is True:
                    was_ready = True
                    if not announced and self.spec is not None:
                        announced = True
                        kind = settings.engine or self.spec.sharding.engine
                        print(banner(self.spec, settings, kind), flush=True)
            if not engine.is_alive():
                if not announced:  # it never served: a new one would fail the same way
                    say(f"the engine process exited ({engine.exitcode}) before it was ready")
                    code = 1
                    break
                say(f"the engine process (pid {engine.pid}) died ({engine.exitcode}); restarting")
                was_ready = False
                engine = self.start_engine()
            for i, front in fronts.items():
                if front.is_alive() or self.stopping:
                    continue
                quick = time.monotonic() - started[i] < QUICK_S
                quick_deaths[i] = quick_deaths[i] + 1 if quick else 0
                if quick_deaths[i] >= 2:
                    say(f"front {i} cannot start (exit {front.exitcode})")
                    code = 1
                    self.stopping = True
                    break
                say(f"front {i} (pid {front.pid}) died ({front.exitcode}); restarting")
                fronts[i] = self.start_front(i)
                started[i] = time.monotonic()
        self._shut_down(list(fronts.values()), engine)
        shutil.rmtree(self.rundir, ignore_errors=True)
        return code

    def _heard(self) -> object:
        """What the engine said: its spec, or True (ready); None once it is gone (the loop
        sees that next)."""
        try:
            said: object = self.ready.recv()
            return said
        except EOFError:
            return None

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _shut_down(self, fronts: list[SpawnProcess], engine: SpawnProcess) -> None:
        """The fronts first (each answers what it has in flight, which needs the engine), then
        the engine (it drains its queue)."""
        grace = self.settings.request_timeout_s + 5
        for processes in (fronts, [engine]):
            for p in processes:
                if p.is_alive():
                    p.terminate()
            deadline = time.monotonic() + grace
            for p in processes:
                p.join(max(0.0, deadline - time.monotonic()))
                if p.is_alive():
                    say(f"{p.name} (pid {p.pid}) did not stop in {grace:g} s; killed")
                    p.kill()
                    p.join()


def run_host(spec: ModelSpec | None, settings: ServerSettings) -> int:
    return Host(spec, settings).run()
