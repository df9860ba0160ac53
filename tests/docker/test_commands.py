"""Every compose service's command, run outside Docker as the container would run it.

The image's entrypoint (docker/entrypoint.sh) and the service's command and environment come
from the files; `seqserve` and `python` resolve to this environment's, the address is
127.0.0.1 instead of 0.0.0.0, ports are free ones, and the model volume is an empty folder
(so the demo is served, as in a fresh checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.docker.files import DOCKER, ROOT, environment, service
from tests.http.server import free_port

BIN = Path(sys.executable).parent
ENTRYPOINT = DOCKER / "entrypoint.sh"


def base_env(model_dir: Path) -> dict[str, str]:
    """This machine's environment less any SEQSERVE_* of the developer's, venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQSERVE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["SEQSERVE_MODEL_DIR"] = str(model_dir)
    return env


def container_argv(command: list[str]) -> list[str]:
    """The image's ENTRYPOINT ["seqserve-entrypoint"] is docker/entrypoint.sh (tested there)."""
    return ["sh", str(ENTRYPOINT), *command]


def health_check(svc: dict, env: dict[str, str]) -> int:
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD"
    return subprocess.run(test[1:], env=env, capture_output=True, timeout=30).returncode


class Api:
    """The `api` service: `seqserve serve --host 0.0.0.0` with the compose environment."""

    def __init__(
        self, model_dir: Path, workdir: Path, host: str = "127.0.0.1", port: int | None = None
    ):
        self.svc = service("api")  # no variables set: compose's defaults
        self.port = port or free_port()
        command = [(host if w == "0.0.0.0" else w) for w in self.svc["command"]]
        assert command != self.svc["command"], "the command binds 0.0.0.0 in the container"
        self.env = {**base_env(model_dir), **environment(self.svc), "SEQSERVE_PORT": str(self.port)}
        self.env["SEQSERVE_GRPC_PORT"] = str(free_port())
        self.url = f"http://{host}:{self.port}"
        assert shutil.which(command[0], path=self.env["PATH"]) == str(BIN / "seqserve")
        self.proc = subprocess.Popen(
            container_argv(command),
            cwd=workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/ping", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"/ping not 200 in {timeout}s")

    def output(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.read() if self.proc.poll() is not None else "(running)"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = Api(tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("home"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


@pytest.mark.slow
def test_api_serves_the_demo_and_its_health_checks_pass(api: Api) -> None:
    body = {"features": {"item_id": [3, 17, 17], "category_id": [5]}}
    r = httpx.post(f"{api.url}/predictions/demo", json=body, timeout=30)
    assert r.status_code == 200, r.text
    rows = r.json()["embeddings"]
    assert [len(rows["item_id"]), len(rows["category_id"])] == [3, 1]
    assert rows["item_id"][1] == rows["item_id"][2] and len(rows["item_id"][0]) == 64
    # compose's health check, with the container's environment: passes now ...
    assert health_check(api.svc, api.env) == 0
    # ... and fails where nothing answers.
    assert health_check(api.svc, {**api.env, "SEQSERVE_PORT": str(free_port())}) != 0


@pytest.mark.slow
def test_loadgen_runs_against_the_api(api: Api, tmp_path: Path) -> None:
    svc = service("loadgen")
    results = tmp_path / "results"
    command = [w.replace("/results", str(results)) for w in svc["command"]]
    command[command.index("http://api:8080")] = api.url
    # One short level per format: the command's own flags, then a 1-second duration.
    command += ["--duration", "1", "--warmup", "0.5", "--concurrency", "2"]
    command += ["--reference-duration", "0.2"]
    r = subprocess.run(
        container_argv(command),
        cwd=ROOT,  # the loadgen image's WORKDIR holds benchmarks/ as the repository does
        env=base_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((results / "bench" / "results.json").read_text())
    assert (results / "bench" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["wrong"] == 0
    assert {row["format"] for row in report["results"]} == {"json", "msgpack"}
    for row in report["results"]:
        assert row["req_s"] > 0 and row["errors"] == {}, row


@pytest.mark.slow
def test_api_stops_cleanly_on_sigterm(api: Api) -> None:
    api.proc.send_signal(signal.SIGTERM)  # what `docker stop` sends (through init)
    assert api.proc.wait(timeout=60) == 0, api.output()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="java is absent: TorchServe needs Java 17")
def test_torchserve_serves_the_demo_and_its_health_check_passes(tmp_path: Path) -> None:
    svc = service("torchserve")
    workdir, port = tmp_path / "torchserve", free_port()
    home = "/home/seqserve/torchserve"
    # Compose's command and environment; outside a container only the folder, the address and
    # the ports differ.
    command = [
        ("127.0.0.1" if w == "0.0.0.0" else w.replace(home, str(workdir))) for w in svc["command"]
    ]
    assert "0.0.0.0" in svc["command"], "the command binds 0.0.0.0 in the container"
    command += ["--port", str(port), "--management-port", str(free_port())]
    command += ["--metrics-port", str(free_port())]
    proc = subprocess.Popen(
        container_argv(command),
        cwd=tmp_path,
        env={**base_env(tmp_path), **environment(svc)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        while not any("TorchServe serves 'demo'" in line for line in seen):
            line = proc.stdout.readline()
            assert line, "".join(seen[-30:])
            seen.append(line)
        test = [
            w.replace(home, str(workdir)).replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            for w in svc["healthcheck"]["test"][1:]
        ]
        assert subprocess.run(test, capture_output=True, timeout=30).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)  # what `docker stop` sends (through init)
        code = proc.wait(timeout=90)
    assert code == 0


def fake_seqserve(tmp_path: Path) -> dict[str, str]:
    """A `seqserve` that prints its arguments and SEQSERVE_MODEL, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "seqserve"
    fake.write_text('#!/bin/sh\necho "model=${SEQSERVE_MODEL-(unset)}"\necho "args=$*"\n')
    fake.chmod(0o755)
    env = base_env(tmp_path / "models")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def entry(env: dict[str, str], *argv: str) -> list[str]:
    r = subprocess.run(container_argv(list(argv)), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_the_entrypoint_serves_the_model_volume_when_it_holds_a_spec(tmp_path: Path) -> None:
    env = fake_seqserve(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    # Empty volume, and compose's empty SEQSERVE_MODEL: the demo (the variable unset).
    for extra in ({}, {"SEQSERVE_MODEL": ""}):
        assert entry({**env, **extra}, "seqserve", "serve") == ["model=(unset)", "args=serve"]
        assert entry({**env, **extra}, "seqserve", "torchserve", "--workdir", "w") == [
            "model=(unset)",
            "args=torchserve --workdir w",
        ]
    (models / "model.yaml").write_text("name: x\n")
    spec = f"{models}/model.yaml"
    assert entry(env, "seqserve", "serve", "--host", "0.0.0.0") == [
        f"model={spec}",
        "args=serve --host 0.0.0.0",
    ]
    # torchserve and archive take --model only: it is put first, so a later one still wins.
    assert entry(env, "seqserve", "torchserve", "--workdir", "w") == [
        f"model={spec}",
        f"args=torchserve --model {spec} --workdir w",
    ]
    # A spec named by the user wins over the volume's.
    assert entry({**env, "SEQSERVE_MODEL": "/elsewhere.yaml"}, "seqserve", "serve") == [
        "model=/elsewhere.yaml",
        "args=serve",
    ]
    # Anything else runs as it is.
    assert entry(env, "sh", "-c", "echo plain") == ["plain"]
