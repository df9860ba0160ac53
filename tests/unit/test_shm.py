"""serving/fronts/shm.py on its own: a region unregistered, re-registered or shrunk while a
request holds it is a 400 naming it, and nothing is read or written out of bounds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.errors import InvalidInput, SharedMemoryDisabled
from serving.fronts.shm import SHM_DIR, SharedMemory

KEY = f"/seqserve-unit-{os.getpid()}"


@pytest.fixture
def region() -> Iterator[Path]:
    path = SHM_DIR / KEY.lstrip("/")
    path.write_bytes(bytes(64))
    try:
        yield path
    finally:
        path.unlink()


def params(size: int, offset: int = 0) -> dict[str, object]:
    return {
        "shared_memory_region": "r",
        "shared_memory_byte_size": size,
        "shared_memory_offset": offset,
    }


def test_off_unless_allowed() -> None:
    with pytest.raises(SharedMemoryDisabled, match="--allow-shared-memory"):
        SharedMemory(False).register("r", KEY, 0, 8)


def test_a_region_unregistered_or_replaced_while_in_use_is_not_written(region: Path) -> None:
    shm = SharedMemory(True)
    shm.register("r", KEY, 16, 32)
    target = shm.slice(params(32), "outputs[0]")
    assert target is not None
    rows = np.arange(8, dtype=np.float32)
    assert shm.write_rows(target, rows) == 32
    assert region.read_bytes()[16:48] == rows.tobytes()  # at the region's own offset
    shm.unregister("r")
    region.write_bytes(bytes(64))
    with pytest.raises(InvalidInput, match="'r' was unregistered while the request ran"):
        shm.write_rows(target, rows)
    shm.register("r", KEY, 0, 64)  # the same name again: still not the region the request held
    with pytest.raises(InvalidInput, match="'r' was unregistered while the request ran"):
        shm.write_rows(target, rows)
    assert region.read_bytes() == bytes(64)
    shm.close()


def test_a_shrunk_file_is_neither_read_nor_written_past_its_end(region: Path) -> None:
    shm = SharedMemory(True)
    shm.register("r", KEY, 0, 64)
    data = shm.slice(params(16, 40), "inputs[0]")
    out = shm.slice(params(16, 40), "outputs[0]")
    assert data is not None and out is not None
    os.truncate(region, 48)
    with pytest.raises(InvalidInput, match="ended after 8 of 16 bytes"):
        data.read()
    with pytest.raises(InvalidInput, match="shrank after registration; nothing was written"):
        shm.write_rows(out, np.zeros(4, np.float32))
    assert region.stat().st_size == 48
    with pytest.raises(InvalidInput, match="cannot hold it"):
        shm.write_rows(out, np.zeros(5, np.float32))
    shm.close()


def test_offsets_and_sizes_stay_inside_the_region(region: Path) -> None:
    shm = SharedMemory(True)
    shm.register("r", KEY, 8, 32)
    for bad, words in (
        (params(33), r"runs past the end of shared memory region 'r' \(32 bytes\)"),
        (params(8, 25), "runs past the end"),
        (params(-1), "expected a byte count"),
        ({"shared_memory_region": 3, "shared_memory_byte_size": 8}, "expected a string"),
        ({"shared_memory_offset": 8}, "needs shared_memory_region"),
    ):
        with pytest.raises(InvalidInput, match=words):
            shm.slice(bad, "inputs[0]")
    assert shm.slice({}, "inputs[0]") is None
    assert shm.status() == [{"name": "r", "key": KEY, "offset": 8, "byte_size": 32}]
    shm.close()
