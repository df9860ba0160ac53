"""Fronts on free ports (with their auth) and the client loop that drives them.

Client: N threads, each with its own synchronous httpx.Client (HTTP/1.1 keep-alive, one
connection each). Measured against one-AsyncClient-N-tasks on the demo (msgpack, 3 s levels,
2-core box): threads cost 0.6-0.9 ms client CPU per request at concurrency 1-32; the async
client cost 1.2-1.5 ms at 1-8 and ~5 ms at 32, where it capped at ~150-190 req/s while threads
reached 700-1070. On a small machine the client shares cores with the server, so its CPU cost is
part of every figure: `client_cpu_ms_per_req` in the results says how much.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import httpx

from serving.bench.mix import HEADERS

__all__ = [
    "FRONTS",
    "HEADERS",
    "ROOT",
    "NotReady",
    "free_port",
    "first_answer",
    "run_threads",
    "start_server",
    "stop_server",
]

ROOT = Path(__file__).resolve().parents[2]
FRONTS = ("fastapi", "torchserve")
READY_TIMEOUT_S = 240

# (start, latency in s, HTTP status or the transport error's name, index of the body sent)
Result = tuple[float, float, int | str, int]
# Called with (worker, its n-th 200 counted from 0, start, body index, response bytes).
OnOk = Callable[[int, int, float, int, bytes], None]


class NotReady(SystemExit):
    """A server that did not come up or does not answer (exits with its message, status 1)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(front: str, port: int, workdir: Path, model: Path | None = None) -> list[str]:
    """`seqserve serve` or `seqserve torchserve` on `port` (the built-in demo without model)."""
    if front not in FRONTS:
        raise ValueError(f"unknown front {front!r}; use {', '.join(FRONTS)}")
    cmd = [sys.executable, "-m", "serving.cli", front if front == "torchserve" else "serve"]
    cmd += ["--port", str(port)]
    if front == "torchserve":
        cmd += ["--management-port", str(free_port()), "--metrics-port", str(free_port())]
        cmd += ["--workdir", str(workdir / "torchserve")]
    if model is not None:
        cmd += ["--model", str(Path(model).resolve())]
    return cmd


def auth_headers(front: str, workdir: Path) -> dict[str, str]:
    """TorchServe keeps token authorization on: every call, /ping too, needs the inference key."""
    if front != "torchserve":
        return {}
    from serving.torchserve import inference_key  # the key file's layout lives there

    return {"Authorization": f"Bearer {inference_key(workdir / 'torchserve' / 'key_file.json')}"}


def start_server(
    front: str, workdir: Path, model: Path | None = None, log: IO[bytes] | None = None
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """Start `front` on free ports; returns the process, its url and its auth headers.

    The server's output goes to `log`, or to our stderr so stdout carries only the table."""
    port = free_port()
    out = log if log is not None else sys.stderr
    proc = subprocess.Popen(
        server_command(front, port, workdir, model), cwd=ROOT, stdout=out, stderr=out
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NotReady(f"{front} exited with {proc.returncode} before it was ready")
        try:
            headers = auth_headers(front, workdir)
            if httpx.get(url + "/ping", headers=headers, timeout=1).status_code == 200:
                return proc, url, headers
        except (httpx.TransportError, OSError, ValueError, KeyError):
            pass  # not listening yet, or the key file is not written yet
        time.sleep(0.25)
    stop_server(proc)
    raise NotReady(f"{front} not ready after {READY_TIMEOUT_S} s")


def first_answer(
    target: str, body: bytes, headers: dict[str, str], timeout: float = READY_TIMEOUT_S
) -> float:
    """Post `body` until a 200 comes back; returns the seconds it took. TorchServe answers
    /ping before its worker has loaded the model: its first prediction can take seconds."""
    t0 = time.monotonic()
    last: int | str = "no answer"
    with httpx.Client(headers=headers, timeout=timeout) as client:
        while time.monotonic() - t0 < timeout:
            try:
                last = client.post(target, content=body).status_code
            except httpx.HTTPError as e:
                last = type(e).__name__
            if last == 200:
                return time.monotonic() - t0
            if isinstance(last, int) and 400 <= last < 500 and last not in (408, 429):
                break  # the request or its auth is refused: waiting will not help
            time.sleep(0.25)
    raise NotReady(f"{target}: no 200 in {time.monotonic() - t0:.0f} s (last: {last})")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_threads(
    target: str,
    bodies: Sequence[bytes],
    headers: dict[str, str],
    workers: int,
    end: float,
    *,
    on_ok: OnOk | None = None,
    timeout: float = 60,
    tick: float = 0,
    on_tick: Callable[[list[Result]], None] | None = None,
) -> list[Result]:
    """`workers` threads post `bodies` to `target` until perf_counter() passes `end`.

    Every 200 goes to `on_ok` (from the worker's thread) when given. With `on_tick`, the calling
    thread calls it every `tick` seconds with the results so far (read racily: a progress line).
    """
    results: list[Result] = []  # list.append is atomic under the GIL

    def worker(k: int) -> None:
        n = 0
        with httpx.Client(headers=headers, timeout=timeout) as client:
            i = k * 7919  # a different walk through the pool per worker
            while (t0 := time.perf_counter()) < end:
                i = (i + 1) % len(bodies)
                status: int | str
                try:
                    r = client.post(target, content=bodies[i])
                    status = r.status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                results.append((t0, time.perf_counter() - t0, status, i))
                if status == 200 and on_ok is not None:
                    on_ok(k, n, t0, i, r.content)
                    n += 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    ticking = on_tick is not None and tick > 0
    next_tick = time.perf_counter() + tick
    for t in threads:
        while t.is_alive():
            t.join(timeout=max(0.0, next_tick - time.perf_counter()) if ticking else None)
            if on_tick is not None and ticking and time.perf_counter() >= next_tick:
                next_tick += tick
                on_tick(results)
    return results
