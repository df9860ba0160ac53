"""Start and stop a real `seqserve serve` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from safetensors.numpy import load_file

from serving.bench import free_port
from serving.commands.demo import write_model

ROOT = Path(__file__).resolve().parents[2]

# A small model with an interleaved column-wise plan, a shared table and a table-wise table.
MODEL = {
    "name": "small",
    "tables": [
        {
            "name": "items",
            "num_embeddings": 5000,
            "embedding_dim": 16,
            "features": ["item_id", "clicked_item_id"],
        },
        {
            "name": "categories",
            "num_embeddings": 50,
            "embedding_dim": 16,
            "features": ["category_id"],
        },
        {"name": "shops", "num_embeddings": 30, "embedding_dim": 16, "features": ["shop_id"]},
    ],
    "sharding": {
        "world_size": 2,
        "tables": {
            "items": {"column_wise": [0, 1, 0, 1]},
            "categories": {"column_wise": [1, 0, 0, 1]},
            "shops": {"table_wise": 1},
        },
    },
    "seed": 3,
}
FEATURE_TABLE = {
    "item_id": "items",
    "clicked_item_id": "items",
    "category_id": "categories",
    "shop_id": "shops",
}


class Server:
    def __init__(self, model: Path, *flags: str):
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        folder = model if model.is_dir() else model.parent  # --model takes either
        self.weights = load_file(str(folder / "weights.safetensors"))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving.commands.cli",
                "serve",
                "--model",
                str(model),
                "--port",
                str(self.port),
                "--grpc-port",
                str(self.grpc_port),
                *flags,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self, timeout: float = 120) -> list[int]:
        """Poll /ping until 200; returns every status seen on the way."""
        seen: list[int] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"server exited: {self.output()}"
            try:
                status = self.client.get("/ping").status_code
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.05)
        raise TimeoutError(f"not ready in {timeout}s: {self.output()}")

    def rows(self, feature: str, ids: list[int]) -> np.ndarray:
        return rows_of(self.weights, feature, ids)

    def metric(self, name: str) -> float:
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stdout is not None
        return self.proc.stdout.read()

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def rows_of(weights: dict[str, np.ndarray], feature: str, ids: list[int]) -> np.ndarray:
    return weights[FEATURE_TABLE[feature]][np.asarray(ids, dtype=np.int64)]


def write_small_model(directory: Path, engine: str = "local") -> Path:
    sharding = {**MODEL["sharding"], "engine": engine}
    return write_model(directory, {**MODEL, "sharding": sharding})


def same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    got = np.asarray(got, dtype=np.float32)
    return got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32))
