"""`seqserve update`: push a row delta or a full reload to a running server (docs/updates.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import httpx
import orjson

from serving.errors import SeqServeError


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default="http://127.0.0.1:8080", help="the server (default %(default)s)"
    )
    p.add_argument("--model", required=True, help="the model's name, as in its URLs")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--delta", type=Path, help="a safetensors file of <table>.ids and .rows")
    what.add_argument(
        "--weights",
        help="a full reload from this path on the server: a .safetensors file or a DCP folder",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("SEQSERVE_AUTH_TOKEN", ""),
        help="the server's bearer token (env SEQSERVE_AUTH_TOKEN)",
    )
    p.add_argument("--timeout-s", type=float, default=600.0, help="how long to wait for the reply")


def run(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    if args.delta is not None:
        try:
            body = args.delta.read_bytes()
        except OSError as e:
            raise SeqServeError(f"cannot read {args.delta}: {e.strerror}") from None
        headers["Content-Type"] = "application/octet-stream"
    else:
        # The path is the server's: one ending in .safetensors is a file, anything else DCP.
        kind = "safetensors" if args.weights.lower().endswith(".safetensors") else "dcp"
        body = orjson.dumps({kind: args.weights})
        headers["Content-Type"] = "application/json"
    url = f"{args.url.rstrip('/')}/models/{args.model}/weights"
    try:
        r = httpx.post(url, content=body, headers=headers, timeout=args.timeout_s)
    except httpx.HTTPError as e:
        raise SeqServeError(f"{url}: {e}") from None
    if r.status_code != 200:
        try:
            message = r.json()["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        raise SeqServeError(f"{r.status_code} from {url}: {message}")
    reply = r.json()
    print(f"version {reply['version']} ({reply['rows']} rows)")
    return 0
