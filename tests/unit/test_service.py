"""The service with a fake engine: admission order, and one version per answer while an
update commits between two batches."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from serving.commands.demo import demo_spec
from serving.core.service import Service
from serving.errors import EngineUnavailable, Unauthorized, UnknownModel
from serving.settings import defaults

SPEC = demo_spec()


class Engine:
    """Answers every id with the current weights' value; a batch can be held mid-compute."""

    kind = "fake"
    spec = SPEC

    def __init__(self) -> None:
        self.ready = True
        self.value = 1.0
        self.hold = threading.Event()
        self.hold.set()
        self.computing = threading.Event()
        self.log: list[str] = []

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def forward(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        self.log.append(f"batch of {len(requests)}")
        self.computing.set()
        self.hold.wait(5)
        return [
            {f: np.full((len(v), 1), self.value, np.float32) for f, v in r.items()}
            for r in requests
        ]

    def prepare_update(self, delta: Any) -> Any:
        def commit() -> None:
            self.log.append("commit")
            self.value = 2.0

        return commit


def test_admission_checks_the_token_then_the_model_then_readiness() -> None:
    engine = Engine()
    engine.ready = False
    service = Service(defaults(auth_token="t"), engine)  # type: ignore[arg-type]
    with pytest.raises(Unauthorized):
        service.admit(None, "nope")
    with pytest.raises(UnknownModel):
        service.admit("Bearer t", "nope")
    with pytest.raises(UnknownModel, match="version '7' is not served"):
        service.admit("Bearer t", SPEC.name, "7")
    with pytest.raises(EngineUnavailable):
        service.admit("Bearer t", SPEC.name)
    engine.ready = True
    service.admit("Bearer t", SPEC.name, "1")


def test_an_update_commits_between_two_batches_and_every_answer_has_one_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = Engine()
    service = Service(defaults(), engine)  # type: ignore[arg-type]
    monkeypatch.setattr(service, "_prepare", lambda kind, body: (1, engine.prepare_update(None)))
    seq = {"item_id": np.array([1, 2], np.int64)}

    async def main() -> None:
        service.batcher.start()
        engine.hold.clear()
        early = asyncio.ensure_future(service.predict([seq, seq]))
        await asyncio.to_thread(engine.computing.wait, 5)  # its batch is computing, held
        update = asyncio.ensure_future(service.change(b"", "delta"))
        for _ in range(20):
            await asyncio.sleep(0)
        late = asyncio.ensure_future(service.predict([seq]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert engine.log == ["batch of 2"]  # the update waits for the batch in flight
        engine.hold.set()
        first, changed, second = await asyncio.gather(early, update, late)
        assert first is not None and second is not None
        assert first.version == 1 and {a["item_id"][0, 0] for a in first.answers} == {1.0}
        assert changed.version == 2
        assert second.version == 2 and second.answers[0]["item_id"][0, 0] == 2.0
        assert engine.log == ["batch of 2", "commit", "batch of 1"]
        await service.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
