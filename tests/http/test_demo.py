"""`seqserve serve` with no model: the demo comes up and its printed curl line works."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.http.server import ROOT, free_port

pytestmark = pytest.mark.slow


def test_the_printed_curl_line_returns_embeddings(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/seqserve"), "serve", "--port", str(port)]
        + ["--grpc-port", str(grpc_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        end = time.monotonic() + 120
        while time.monotonic() < end:
            line = proc.stdout.readline()
            assert line, f"server exited: {''.join(lines)}"
            lines.append(line)
            if line.strip().startswith("curl "):
                break
        curl = lines[-1].strip()
        text = "".join(lines) + proc.stdout.readline()
        assert f"model 'demo' ready on http://127.0.0.1:{port} (2 ranks, local engine)" in text
        out = subprocess.run(
            curl, shell=True, capture_output=True, text=True, timeout=30, check=True
        )
        emb = json.loads(out.stdout)["embeddings"]
        assert [len(emb["item_id"]), len(emb["category_id"])] == [3, 1]
        assert all(len(row) == 64 for row in emb["item_id"])
        assert emb["item_id"][1] == emb["item_id"][2]  # the same id twice, the same row
        assert re.search(r"docs http://127\.0\.0\.1:\d+/docs", text)
        # The README's tritonclient example, on this server's ports, prints the two shapes.
        example = readme_example().replace("8080", str(port)).replace("8081", str(grpc_port))
        run = subprocess.run(
            [sys.executable, "-c", example], capture_output=True, text=True, timeout=60
        )
        assert run.stdout.splitlines() == ["(3, 64)", "(3, 64)"], run.stdout + run.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0


def readme_example() -> str:
    """The python block of the README's Open Inference Protocol section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Open Inference Protocol") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```", start)]
