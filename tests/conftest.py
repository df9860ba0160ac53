from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http.server import Server, write_small_model


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[Server]:
    s = Server(model_path)
    try:
        s.wait_ready()
        yield s
    finally:
        s.close()
