"""The optional bearer token: required on predictions and metadata, never on health or metrics."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http.server import ROOT, Server, free_port

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def guarded(model_path: Path) -> Iterator[Server]:
    s = Server(model_path, "--auth-token", TOKEN)
    try:
        s.wait_ready()
        yield s
    finally:
        s.close()


def test_a_token_is_required_on_predictions_and_metadata(guarded: Server) -> None:
    c = guarded.client
    body = {"features": {"item_id": [1]}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for r in (
            c.post("/predictions/small", json=body, headers=headers),
            c.get("/models/small", headers=headers),
        ):
            assert r.status_code == 401, r.text
            assert r.json()["type"] == "Unauthorized" and r.headers["WWW-Authenticate"] == "Bearer"
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert c.post("/predictions/small", json=body, headers=ok).status_code == 200
    assert c.get("/models/small", headers=ok).status_code == 200
    assert c.get("/ping").status_code == 200 and c.get("/metrics").status_code == 200


def test_binding_beyond_127_0_0_1_without_a_token_warns(model_path: Path) -> None:
    # 127.0.0.2 is still loopback (nothing leaves the machine) but not the default address.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.commands.cli",
            "serve",
            "--model",
            str(model_path),
            "--host",
            "127.0.0.2",
            "--port",
            str(free_port()),
            "--grpc-port",
            str(free_port()),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "warning: binding 127.0.0.2 with no --auth-token" in line
    finally:
        proc.terminate()
        proc.wait(timeout=60)
