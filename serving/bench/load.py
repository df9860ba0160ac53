"""Fronts on free ports (with their auth), their first answer, and their stop.

The load itself comes from `serving.bench.wire` (its docstring says why not httpx).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
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
    "launch",
    "parse_front",
    "processes",
    "start_server",
    "stop_server",
]

ROOT = Path(__file__).resolve().parents[2]
FRONTS = ("fastapi", "torchserve")  # fastapi:N: `seqserve serve --workers N`
READY_TIMEOUT_S = 240


class NotReady(SystemExit):
    """A server that did not come up or does not answer (exits with its message, status 1)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_front(name: str) -> tuple[str, int]:
    """A --compare name -> (front, worker count): fastapi is (fastapi, 1), fastapi:4 is
    (fastapi, 4), torchserve is (torchserve, 1)."""
    front, colon, count = name.partition(":")
    if front not in FRONTS or (colon and front != "fastapi"):
        raise ValueError(f"unknown front {name!r}; use {', '.join(FRONTS)} or fastapi:WORKERS")
    if not colon:
        return front, 1
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"front {name!r}: fastapi:N takes a worker count N >= 1")
    return front, int(count)


def server_command(
    front: str, port: int, workdir: Path, model: Path | None = None, grpc_port: int | None = None
) -> list[str]:
    """`seqserve serve --workers N` (fastapi, fastapi:N) or `seqserve torchserve` on `port`
    (the built-in demo without model). `seqserve serve` gets its gRPC port too, `grpc_port` or
    a free one: two servers on the default 8081 would clash."""
    kind, workers = parse_front(front)
    cmd = [
        sys.executable,
        "-m",
        "serving.commands.cli",
        kind if kind == "torchserve" else "serve",
    ]
    cmd += ["--port", str(port)]
    if kind == "fastapi":
        cmd += ["--grpc-port", str(grpc_port if grpc_port is not None else free_port())]
        cmd += ["--workers", str(workers)]  # always: SEQSERVE_WORKERS must not change fastapi
    if kind == "torchserve":
        cmd += ["--management-port", str(free_port()), "--metrics-port", str(free_port())]
        cmd += ["--workdir", str(workdir / "torchserve")]
    if model is not None:
        cmd += ["--model", str(Path(model).resolve())]
    return cmd


def auth_headers(front: str, workdir: Path) -> dict[str, str]:
    """TorchServe keeps token authorization on: every call, /ping too, needs the inference key."""
    if front != "torchserve":
        return {}
    from serving.commands.torchserve import inference_key  # the key file's layout lives there

    return {"Authorization": f"Bearer {inference_key(workdir / 'torchserve' / 'key_file.json')}"}


def start_server(
    front: str,
    workdir: Path,
    model: Path | None = None,
    log: IO[bytes] | None = None,
    grpc_port: int | None = None,
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """Start `front` on free ports (the fastapi front's gRPC on `grpc_port` when given);
    returns the process, its url and its auth headers.

    The server's output goes to `log`, or to our stderr so stdout carries only the table."""
    port = free_port()
    proc, url = launch(
        server_command(front, port, workdir, model, grpc_port),
        front,
        port,
        log,
        lambda: auth_headers(front, workdir),  # read again each try: the key file comes late
    )
    return proc, url, auth_headers(front, workdir)


def launch(
    cmd: list[str],
    what: str,
    port: int,
    log: IO[bytes] | None = None,
    headers: Callable[[], dict[str, str]] = dict,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run `cmd` (a server on 127.0.0.1:`port`) until its /ping answers 200; returns it and
    its url. Stopped again if it does not get there, whatever stops the wait (Ctrl-C too)."""
    out = log if log is not None else sys.stderr
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise NotReady(f"{what} exited with {proc.returncode} before it was ready")
            try:
                if httpx.get(url + "/ping", headers=headers(), timeout=1).status_code == 200:
                    return proc, url
            except (httpx.TransportError, OSError, ValueError, KeyError):
                pass  # not listening yet, or the key file is not written yet
            time.sleep(0.25)
        raise NotReady(f"{what} not ready after {READY_TIMEOUT_S} s")
    except BaseException:
        stop_server(proc)
        raise


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


def processes(url: str, model: str, headers: dict[str, str]) -> dict[int, str]:
    """pid -> kind of the processes a seqserve server lists (GET /models/{model}
    "processes"); empty where the route or the field is missing (TorchServe, the HTTP
    ceiling), so that the CPU falls back on command-line roles."""
    try:
        r = httpx.get(f"{url}/models/{model}", headers=headers, timeout=10)
        listed = r.json()["processes"] if r.status_code == 200 else []
        return {int(p["pid"]): str(p["kind"]) for p in listed}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return {}


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
