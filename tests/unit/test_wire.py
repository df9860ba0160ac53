"""The messages between a host's fronts and its engine process (serving/core/wire.py) and the
counters they add up (serving/core/metrics.py): what crosses comes back the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.config import ModelSpec
from serving.core import metrics, wire
from serving.errors import InvalidInput, QueueFull, SeqServeError

SPEC = ModelSpec.model_validate(
    {
        "name": "mixed",
        "tables": [
            {"name": "a", "num_embeddings": 10, "embedding_dim": 8, "features": ["f", "g"]},
            {"name": "b", "num_embeddings": 10, "embedding_dim": 16, "features": ["h"]},
        ],
        "sharding": {"world_size": 2, "engine": "local"},
    }
)
LAYOUT = wire.Layout.of(SPEC)


def ids(*values: int) -> np.ndarray:
    return np.asarray(values, np.int64)


SEQUENCES = [
    {"h": ids(1, 2), "f": ids(3)},  # not in spec order, no g
    {"g": ids()},  # named, empty
    {},  # names nothing
    {"f": ids(9, 9, 0), "g": ids(5), "h": ids(7)},
]


def test_sequences_cross_as_two_frames_and_come_back_the_same() -> None:
    lengths, frame = wire.pack_sequences(LAYOUT, SEQUENCES)
    back = wire.unpack_sequences(LAYOUT, lengths.tobytes(), frame)
    assert len(back) == len(SEQUENCES)
    for sent, got in zip(SEQUENCES, back, strict=True):
        assert set(got) == set(sent)
        for f in sent:
            assert np.array_equal(got[f], sent[f]) and got[f].dtype == np.int64


def test_rows_cross_as_one_frame_in_the_order_each_sequence_named_its_features() -> None:
    lengths, frame = wire.pack_sequences(LAYOUT, SEQUENCES)
    engine_side = wire.unpack_sequences(LAYOUT, lengths.tobytes(), frame)
    widths = dict(LAYOUT.widths)
    rng = np.random.default_rng(0)
    answers = [
        {f: rng.standard_normal((len(v), widths[f])).astype(np.float32) for f, v in s.items()}
        for s in engine_side
    ]
    rows = bytes(wire.pack_rows(LAYOUT, engine_side, answers))
    back = wire.unpack_rows(LAYOUT, SEQUENCES, rows)
    for sent, want, got in zip(SEQUENCES, answers, back, strict=True):
        assert list(got) == list(sent)  # the request's order, as one process answers
        for f in sent:
            assert np.array_equal(got[f].view(np.uint32), want[f].view(np.uint32))


def test_errors_cross_by_kind_and_anything_else_is_the_engines_failure() -> None:
    with pytest.raises(QueueFull, match="full"):
        wire.raise_error(wire.error_of(QueueFull("full")))
    with pytest.raises(InvalidInput):
        wire.raise_error(wire.error_of(InvalidInput("bad")))
    kind, message = wire.error_of(ZeroDivisionError("boom"))
    assert kind == "EngineUnavailable" and "ZeroDivisionError: boom" in message
    with pytest.raises(SeqServeError):
        wire.raise_error(["NoSuchKind", "x"])


def _counted(route: str, n: int) -> metrics.Snapshot:
    m = metrics.Metrics()
    for _ in range(n):
        m.observe(route, 200, 0.002)
    m.on_batch(n, 10 * n, n, 0.001)
    m.stats.answered(True, 1000)
    return m.snapshot()


def test_snapshots_add_up_and_stored_ones_outlive_their_process(tmp_path: Path) -> None:
    total = metrics.add([_counted("/a", 3), _counted("/a", 2), _counted("/b", 1)])
    assert total["requests"] == {"/a": {"200": 5}, "/b": {"200": 1}}
    assert sum(total["latency"]["/a"][:-1]) == 5
    assert sum(total["batch_sequences"][:-1]) == 3 and total["stats"]["success"][0] == 3
    metrics.store(_counted("/a", 4), tmp_path / "front-11.counters")
    metrics.store(_counted("/a", 7), tmp_path / "front-12.counters")
    gone = metrics.stored(tmp_path, skip={12})  # 12 is alive: its counters come fresh
    assert [s["requests"]["/a"]["200"] for s in gone] == [4]
    text = metrics.exposition(total, {"version": 3.0}).decode()
    assert 'seqserve_requests_total{route="/a",status="200"} 5.0' in text
    assert "seqserve_model_version 3.0" in text
