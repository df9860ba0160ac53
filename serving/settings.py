"""Server settings: one table of options; flags, then SEQSERVE_* environment, then defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.batching import BatchSettings
from serving.codec import Limits
from serving.config import ENGINE_KINDS


@dataclass(frozen=True)
class Option:
    name: str  # flag --name-with-dashes, environment SEQSERVE_NAME
    type: type
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "SEQSERVE_" + self.name.upper()


OPTIONS = [
    Option("host", str, "127.0.0.1", "address to bind; anything but loopback exposes the server"),
    Option("port", int, 8080, "port to listen on"),
    Option("max_batch_size", int, 64, "sequences per batch, at most"),
    Option("max_batch_ids", int, 65536, "ids per batch, at most"),
    Option("max_delay_ms", float, 5.0, "how long a batch waits for more requests, from its oldest"),
    Option("max_gap_ms", float, 2.0, "a batch also closes when no request came for this long"),
    Option("max_queue", int, 1024, "sequences waiting for a batch; beyond it, 503 + Retry-After"),
    Option("retry_after_s", float, 1.0, "the Retry-After given with a 503 for a full queue"),
    Option("request_timeout_s", float, 30.0, "deadline of a request; past it, 504"),
    Option("rank_timeout_s", float, 10.0, "a batch with no reply from a rank this long: restart"),
    Option("max_body_bytes", int, 4 * 1024 * 1024, "request body size limit; beyond it, 413"),
    Option("max_ids_per_request", int, 16384, "ids in one HTTP request; beyond it, 413"),
    Option("max_instances", int, 256, "sequences in one `instances` request; beyond it, 413"),
    Option("engine", str, "", "local or distributed (default: the spec's sharding.engine, local)"),
    Option(
        "dispatch",
        str,
        "split",
        "distributed engine: how a batch reaches the ranks, split (a slice each) or one",
    ),
    Option("auth_token", str, "", "bearer token required on predictions and metadata (none: open)"),
]


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    request_timeout_s: float = 30.0
    rank_timeout_s: float = 10.0
    engine: str = ""  # empty: the spec's
    dispatch: str = "split"
    auth_token: str = ""
    limits: Limits = field(default_factory=Limits)
    batch: BatchSettings = field(default_factory=BatchSettings)


def add_flags(parser: argparse.ArgumentParser) -> None:
    for o in OPTIONS:
        raw = os.environ.get(o.env)
        default = o.type(raw) if raw is not None else o.default
        parser.add_argument(
            "--" + o.name.replace("_", "-"),
            type=o.type,
            default=default,
            help=f"{o.help} (env {o.env}, default {o.default})",
        )
    parser.add_argument(
        "--model",
        type=Path,
        default=os.environ.get("SEQSERVE_MODEL") or None,  # empty: the demo, not Path("")
        help="model.yaml to serve (env SEQSERVE_MODEL; default: the built-in demo)",
    )


def from_args(args: argparse.Namespace) -> ServerSettings:
    if args.dispatch not in ("split", "one"):
        raise ValueError(f"--dispatch must be split or one, not {args.dispatch!r}")
    if args.engine not in ("", *ENGINE_KINDS):
        raise ValueError(f"--engine must be local or distributed, not {args.engine!r}")
    return ServerSettings(
        host=args.host,
        port=args.port,
        request_timeout_s=args.request_timeout_s,
        rank_timeout_s=args.rank_timeout_s,
        engine=args.engine,
        dispatch=args.dispatch,
        auth_token=args.auth_token,
        limits=Limits(
            max_body_bytes=args.max_body_bytes,
            max_ids_per_request=args.max_ids_per_request,
            max_instances=args.max_instances,
        ),
        batch=BatchSettings(
            max_batch_size=args.max_batch_size,
            max_batch_ids=args.max_batch_ids,
            max_delay_s=args.max_delay_ms / 1000,
            max_gap_s=args.max_gap_ms / 1000,
            max_queue=args.max_queue,
            retry_after_s=args.retry_after_s,
        ),
    )
