"""The distributed engine's supervisor thread: it watches the serving rank group and, when
the group fails, starts a new generation with back-off between failed attempts.

A mixin of `DistributedEngine`, whose state (lock, group, back-off, events) it shares.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import TYPE_CHECKING

from serving.config import ModelSpec
from serving.engine.distributed.group import Backoff, RankGroup, RestartAttempt

log = logging.getLogger("seqserve")


class Supervised:
    # Set by DistributedEngine.__init__.
    spec: ModelSpec
    restart_backoff_max: float
    restarts: int
    restart_attempts: deque[RestartAttempt]
    _lock: threading.Lock
    _state: str
    _group: RankGroup | None
    _backoff: Backoff
    _closing: threading.Event
    _retry: threading.Event
    _wake_r: int

    if TYPE_CHECKING:

        def _launch(
            self, spec: ModelSpec, interrupt: int | None = None, replay: bool = True
        ) -> RankGroup: ...

        def _install(self, group: RankGroup) -> None: ...

        def _forget(self, group: RankGroup) -> None: ...

        def _take_down(self, group: RankGroup, reason: str) -> None: ...

    def _supervise(self) -> None:
        while not self._closing.is_set():
            try:
                if self._watch():
                    self._restart()
            except Exception:  # a supervisor that dies would leave the engine down for good
                log.exception("the rank group supervisor failed; carrying on")
                self._closing.wait(self._backoff.initial)

    def _watch(self) -> bool:
        """Wait until the serving group fails (True: restart it) or close() is called."""
        with self._lock:
            group, state = self._group, self._state
        if state == "restarting":
            return True  # taken down by forward() before we looked
        if state != "serving" or group is None:
            wait([self._wake_r])  # nothing to watch until close()
            return False
        wait([self._wake_r, *group.sentinels])
        if self._closing.is_set():
            return False
        with self._lock:
            if self._state == "serving" and self._group is not group:
                return False  # a reload swapped groups: watch the new one
            if self._group is group and self._state == "serving":
                if group.alive():
                    return False
                self._take_down(group, f"while idle: {group.dead_summary()}")
        if time.monotonic() - group.up_since >= self.restart_backoff_max:
            self._backoff.reset()  # it served long enough: not a crash loop
        return True

    def _restart(self) -> None:
        while not self._closing.is_set():
            delay = self._backoff.next()
            self._retry.clear()
            # A worker joining ends the wait: its node is likely what the last attempt lacked.
            if delay and self._retry.wait(delay) and self._closing.is_set():
                return
            started = time.monotonic()
            try:
                group = self._launch(self.spec, interrupt=self._wake_r)
            except Exception as e:  # GroupFailed, or the spawn itself: try again later
                self.restart_attempts.append(
                    RestartAttempt(delay, started, time.monotonic(), str(e))
                )
                if not self._closing.is_set():
                    log.warning(
                        "restarting the rank group failed; next try in %gs: %s",
                        self._backoff.delay,
                        e,
                    )
                continue
            with self._lock:
                if self._closing.is_set():
                    group.kill()
                    self._forget(group)
                    return
                self._install(group)
                self.restarts += 1
            self.restart_attempts.append(RestartAttempt(delay, started, time.monotonic(), None))
            log.warning("rank group %d is serving again", group.generation)
            return
