"""Schemathesis against the server's own OpenAPI schema: no 5xx, responses match the schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.http.server import Server, same_bits

pytestmark = pytest.mark.slow


def test_schemathesis_finds_no_server_error_and_the_server_stays_healthy(server: Server) -> None:
    st = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [
            str(st),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--max-examples",
            "60",
            "--seed",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout
    # /ping says 503 while the ranks warm up; any other 5xx is a failure.
    served_5xx = [
        line
        for line in server.client.get("/metrics").text.splitlines()
        if line.startswith("seqserve_requests_total")
        and 'status="5' in line
        and "/ping" not in line
    ]
    assert not served_5xx, served_5xx
    assert server.client.get("/ping").status_code == 200
    r = server.client.post("/predictions/small", json={"features": {"item_id": [7, 4999]}})
    assert same_bits(
        np.asarray(r.json()["embeddings"]["item_id"]), server.rows("item_id", [7, 4999])
    )
