"""The HTTP ceiling: what uvicorn alone serves on this machine, with no model behind it.

A plain ASGI callable (no FastAPI, no routing, no decoding) under uvicorn with uvloop and
httptools, in its own process like the fronts: it reads each request body whole and sends back
a stored answer, seqserve's own answer to a typical request of the mix, in the format the
request's Accept names. Every req/s a front loses against it goes to the front's own work
(decode, batching, the engine, encode), not to HTTP or the load client; the project's target is
FastAPI msgpack at >= 0.25x of the ceiling's msgpack req/s at 32 clients.

    python -m serving.bench.ceiling --port P --json FILE --msgpack FILE
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from serving.bench.load import HEADERS, free_port, launch
from serving.bench.mix import Pool
from serving.fronts import codec

WHAT = (
    "a bare ASGI app under uvicorn (uvloop, httptools) in its own process: reads the body, "
    "sends a stored answer of the mix's mean size"
)
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


def make_app(json: bytes | None, msgpack: bytes | None) -> App:
    """The ASGI app: msgpack to a request whose Accept names it, JSON to any other (seqserve's
    negotiation); the answer's headers are built once, as a ceiling should."""
    answers = {
        want: (body, [(b"content-type", media.encode()), (b"content-length", b"%d" % len(body))])
        for want, body, media in ((False, json, codec.JSON), (True, msgpack, codec.MSGPACK))
        if body is not None
    }
    if not answers:
        raise ValueError("the ceiling needs a JSON or a msgpack answer")
    fallback = next(iter(answers.values()))

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # uvicorn runs it with lifespan off: only HTTP comes
            return
        message = await receive()
        while message.get("more_body"):  # the body is read, as a front must
            message = await receive()
        if message["type"] == "http.disconnect":
            return
        wants = any(k == b"accept" and b"msgpack" in v for k, v in scope["headers"])
        body, headers = answers.get(wants, fallback)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def typical_answers(
    pool: Pool, bits: Mapping[str, np.ndarray], formats: list[str]
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """seqserve's answer, per format, to the pool's request whose float count is closest to
    the mean (an average-size answer), built from the model's rows with the fronts' own codec;
    and what results.json says of them."""
    floats = [sum(len(ids) * bits[f].shape[1] for f, ids in r.items()) for r in pool.requests]
    index = int(np.argmin(np.abs(np.array(floats) - np.mean(floats))))
    rows = {f: bits[f][ids].view(np.float32) for f, ids in pool.requests[index].items()}
    answers = {fmt: codec.encode([rows], False, HEADERS[fmt].get("Accept"))[0] for fmt in formats}
    about = {
        "what": WHAT,
        "request": index,
        "ids": pool.ids[index],
        "answer_bytes": {fmt: len(body) for fmt, body in answers.items()},
    }
    return answers, about


def start(
    answers: Mapping[str, bytes], workdir: Path, log: IO[bytes] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Write the answers (format -> body) under `workdir`, start the ceiling on a free port
    and wait until it answers; returns its process (load.stop_server stops it) and its url."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "serving.bench.ceiling", "--port", str(port)]
    for fmt, body in answers.items():
        path = workdir / f"answer.{fmt}"
        path.write_bytes(body)
        cmd += [f"--{fmt}", str(path)]
    return launch(cmd, "the HTTP ceiling", port, log)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m serving.bench.ceiling", description=__doc__)
    p.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    p.add_argument("--json", type=Path, help="the answer to send as application/json")
    p.add_argument("--msgpack", type=Path, help="the answer to send as application/msgpack")
    args = p.parse_args(argv)
    if args.json is None and args.msgpack is None:
        p.error("give --json, --msgpack or both")
    import uvicorn

    app = make_app(
        args.json.read_bytes() if args.json else None,
        args.msgpack.read_bytes() if args.msgpack else None,
    )
    # uvloop and httptools named, not "auto": a missing one must fail, not fall back to the
    # slower pure-Python loop or parser and lower the ceiling quietly.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
