"""The distributed engine's supervisor: a thread that watches the serving rank group and, when
the group fails, starts a new generation with back-off between failed attempts.

Composed into `DistributedEngine` (vLLM keeps its process manager apart from the client the
same way): the engine owns the group and its lock, the supervisor owns the restart policy
(back-off, attempts, the thread) and reaches the engine only through `Generations`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Protocol

from serving.config import ModelSpec
from serving.engine.distributed.group import Backoff, RankGroup, RestartAttempt

log = logging.getLogger("seqserve")


class Generations(Protocol):
    """What the supervisor needs of its engine: the serving group under the engine's lock, a
    way to launch a new one, and the events that end the wait."""

    spec: ModelSpec
    _lock: threading.Lock
    _closing: threading.Event
    _wake_r: int  # readable once close() is called

    @property
    def _state(self) -> str: ...

    @property
    def _group(self) -> RankGroup | None: ...

    def _launch(
        self, spec: ModelSpec, interrupt: int | None = None, replay: bool = True
    ) -> RankGroup: ...

    def _install(self, group: RankGroup) -> None: ...

    def _forget(self, group: RankGroup) -> None: ...

    def _take_down(self, group: RankGroup, reason: str) -> None: ...


class Supervisor:
    def __init__(self, engine: Generations, backoff: float, backoff_max: float):
        self.engine = engine
        self.backoff = Backoff(backoff, backoff_max)
        self.backoff_max = backoff_max
        self.restarts = 0  # groups brought back
        self.attempts: deque[RestartAttempt] = deque(maxlen=100)
        self.retry = threading.Event()  # set by stop() and by a worker joining: try now
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.backoff.reset()
        self._thread = threading.Thread(
            target=self._supervise, name="seqserve-supervisor", daemon=True
        )
        self._thread.start()

    def stop(self) -> bool:
        """End the thread (the engine has set its closing event); False if it did not end."""
        self.retry.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)
        return thread is None or not thread.is_alive()

    def _supervise(self) -> None:
        closing = self.engine._closing
        while not closing.is_set():
            try:
                if self._watch():
                    self._restart()
            except Exception:  # a supervisor that dies would leave the engine down for good
                log.exception("the rank group supervisor failed; carrying on")
                closing.wait(self.backoff.initial)

    def _watch(self) -> bool:
        """Wait until the serving group fails (True: restart it) or close() is called."""
        engine = self.engine
        with engine._lock:
            group, state = engine._group, engine._state
        if state == "restarting":
            return True  # taken down by forward() before we looked
        if state != "serving" or group is None:
            wait([engine._wake_r])  # nothing to watch until close()
            return False
        wait([engine._wake_r, *group.sentinels])
        if engine._closing.is_set():
            return False
        with engine._lock:
            if engine._state == "serving" and engine._group is not group:
                return False  # a reload swapped groups: watch the new one
            if engine._group is group and engine._state == "serving":
                if group.alive():
                    return False
                engine._take_down(group, f"while idle: {group.dead_summary()}")
        if time.monotonic() - group.up_since >= self.backoff_max:
            self.backoff.reset()  # it served long enough: not a crash loop
        return True

    def _restart(self) -> None:
        engine = self.engine
        while not engine._closing.is_set():
            delay = self.backoff.next()
            self.retry.clear()
            # A worker joining ends the wait: its node is likely what the last attempt lacked.
            if delay and self.retry.wait(delay) and engine._closing.is_set():
                return
            started = time.monotonic()
            try:
                group = engine._launch(engine.spec, interrupt=engine._wake_r)
            except Exception as e:  # GroupFailed, or the spawn itself: try again later
                self.attempts.append(RestartAttempt(delay, started, time.monotonic(), str(e)))
                if not engine._closing.is_set():
                    log.warning(
                        "restarting the rank group failed; next try in %gs: %s",
                        self.backoff.delay,
                        e,
                    )
                continue
            with engine._lock:
                if engine._closing.is_set():
                    group.kill()
                    engine._forget(group)
                    return
                engine._install(group)
                self.restarts += 1
            self.attempts.append(RestartAttempt(delay, started, time.monotonic(), None))
            log.warning("rank group %d is serving again", group.generation)
            return
