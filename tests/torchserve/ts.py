"""Start and stop a real TorchServe through `seqserve torchserve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving.commands.torchserve import inference_key
from tests.http.server import ROOT, free_port


class TorchServe:
    def __init__(self, model: Path, workdir: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        cmd = [
            sys.executable,
            "-m",
            "serving.commands.cli",
            "torchserve",
            "--model",
            str(model),
            "--port",
            str(self.port),
            "--management-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--workdir",
            str(workdir),
            *flags,
        ]
        self.log = (workdir.parent / f"{workdir.name}.out").open("w+")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client: httpx.Client | None = None

    def wait_ready(self, timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"seqserve torchserve exited: {self.output()}"
            if "TorchServe serves" in self.output():
                key = inference_key(self.workdir / "key_file.json")
                self.client = httpx.Client(
                    base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {key}"}
                )
                return
            time.sleep(0.2)
        raise TimeoutError(f"TorchServe not ready in {timeout}s: {self.output()[-3000:]}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def model_log(self) -> str:
        path = self.workdir / "logs" / "model_log.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
