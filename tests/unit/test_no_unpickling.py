"""Nothing a client sends is unpickled or torch.load-ed: no such call in the serving code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = re.compile(r"\b(pickle\.loads?|torch\.load|cloudpickle\.loads?|marshal\.loads?)\(")


def test_no_unpickling_in_serving_or_handler() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("serving", "handler")
        for path in (ROOT / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert not found, found
