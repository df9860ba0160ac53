"""Server settings, declared once: each option's flag, environment variable, default and help.

`OPTIONS` is the only place a default is written. The `seqserve serve` flags, the settings
objects (`ServerSettings`, `Limits`, `BatchSettings`), docs/http.md's table
(`python -m serving.settings`) and the TorchServe template's limits all come from it.
Precedence: flag, then SEQSERVE_* environment, then the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.config import ENGINE_KINDS


@dataclass(frozen=True)
class Limits:
    """Request size limits; the defaults and help live in `OPTIONS`."""

    max_body_bytes: int
    max_ids_per_request: int  # summed over every feature and instance of one body
    max_instances: int


@dataclass(frozen=True)
class BatchSettings:
    """What closes a batch; the defaults and help live in `OPTIONS`."""

    max_batch_size: int  # sequences per batch (a request with more goes alone)
    max_batch_ids: int  # ids per batch (likewise)
    # Upper bounds on waiting for company once the engine is free (0: a batch goes at once
    # with what is queued; what arrives while it computes makes the next one). How long a
    # batch may wait, counted from its oldest request's arrival...
    max_delay_ms: float
    # ...and how long since the last arrival: a lone request does not wait out the whole
    # delay, while a burst of arrivals still fills the batch.
    max_gap_ms: float
    max_queue: int  # sequences waiting, not counting the batch being processed
    retry_after_s: float  # advice given with QueueFull


@dataclass(frozen=True)
class Option:
    name: str  # flag --name-with-dashes, environment SEQSERVE_NAME, field of the settings
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    shown: str = ""  # the default as the settings table says it, where the value is not telling
    least: float | None = None  # the smallest value taken; None: 1 for counts, 0 for seconds

    @property
    def floor(self) -> float | None:
        if self.least is not None:
            return self.least
        return {int: 1, float: 0}.get(self.type)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "SEQSERVE_" + self.name.upper()


OPTIONS = (
    Option("host", str, "127.0.0.1", "address to bind; anything but loopback exposes the server"),
    Option(
        "port", int, 8080, "HTTP port: the native API and the Open Inference Protocol REST", least=0
    ),
    Option(
        "workers",
        int,
        1,
        "front processes serving HTTP and gRPC on the same ports over one engine process "
        "(1: one process does everything)",
    ),
    Option("grpc_port", int, 8081, "Open Inference Protocol gRPC port, bound on --host", least=0),
    Option(
        "max_batch_size", int, 64, "sequences per batch, at most (a request with more goes alone)"
    ),
    Option("max_batch_ids", int, 65536, "ids per batch, at most"),
    Option(
        "max_delay_ms",
        float,
        0.0,
        "once the engine is free, how long a batch may wait for more requests, from its oldest "
        "(0: it goes at once; requests that arrive while the engine works make the next batch)",
    ),
    Option(
        "max_gap_ms",
        float,
        0.0,
        "with --max-delay-ms, a batch also closes when no request came for this long",
    ),
    Option("max_queue", int, 1024, "sequences waiting for a batch; beyond it, 503 + Retry-After"),
    Option("retry_after_s", float, 1.0, "the Retry-After given with a 503 for a full queue"),
    Option("request_timeout_s", float, 30.0, "deadline of a request; past it, 504"),
    Option(
        "read_timeout_s",
        float,
        30.0,
        "a request whose headers and body have not all arrived by then is dropped with 408",
    ),
    Option(
        "max_connections",
        int,
        1024,
        "open HTTP connections (and gRPC calls in flight), at most; beyond it, refused with 503",
    ),
    Option("rank_timeout_s", float, 10.0, "a batch with no reply from a rank this long: restart"),
    Option("max_body_bytes", int, 4 * 1024 * 1024, "request body size limit; beyond it, 413"),
    Option("max_ids_per_request", int, 16384, "ids in one request; beyond it, 413"),
    Option("max_instances", int, 256, "sequences in one request; beyond it, 413"),
    Option(
        "engine",
        str,
        "",
        "local or distributed (default: the spec's sharding.engine, local)",
        choices=("", *ENGINE_KINDS),
        shown="the spec's",
    ),
    Option(
        "dispatch",
        str,
        "split",
        "distributed engine: how a batch reaches the ranks, split (a slice each) or one",
        choices=("split", "one"),
    ),
    Option(
        "nnodes",
        int,
        1,
        "hosts the distributed engine's ranks span; the others run `seqserve worker`",
    ),
    Option(
        "master_port",
        int,
        8083,
        "port, on --host, where the other hosts' workers and ranks join (--nnodes > 1); "
        "their rendezvous store takes the next port",
        least=0,
    ),
    Option(
        "cluster_key",
        str,
        "",
        "shared secret of the front and its workers (--nnodes > 1); keep it like a password",
        shown="none",
    ),
    Option(
        "cluster_interface",
        str,
        "",
        "network interface (or address) this host's ranks use to reach the other hosts "
        "(--nnodes > 1); sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME for them",
        shown="the one the workers reach, unless GLOO_SOCKET_IFNAME is set",
    ),
    Option(
        "join_timeout_s",
        float,
        20.0,
        "across hosts, a rank that cannot reach the store or a peer this long fails the group "
        "in one line naming the address and port; a worker says why it cannot reach its front",
        least=1,
    ),
    Option(
        "auth_token",
        str,
        "",
        "bearer token required on predictions, metadata and weight updates (none: open)",
        shown="none",
    ),
    Option(
        "allow_updates",
        bool,
        False,
        "accept weight updates on POST /models/{model}/weights (beyond loopback: needs a token)",
        shown="off",
    ),
    Option(
        "max_update_bytes",
        int,
        2 * 1024**3,
        "body size limit of a weight update; beyond it, 413",
        shown="2 GiB",
    ),
    Option(
        "updates_dir",
        str,
        "",
        "apply the row deltas (*.safetensors) that appear in this folder, once each, in name order",
        shown="none",
    ),
    Option(
        "reload_roots",
        str,
        "",
        "folders a full reload may read weights from, separated by ':' (paths are resolved "
        "first: no '..' or symlink out of them)",
        shown="the model's folder and --updates-dir",
    ),
    Option(
        "allow_shared_memory",
        bool,
        False,
        "serve Triton's system shared memory extension: inputs and outputs in /dev/shm regions "
        "a client on this host registers (needs the token when there is one; beyond loopback, "
        "needs --auth-token)",
        shown="off",
    ),
)
BY_NAME = {o.name: o for o in OPTIONS}

# TorchServe's own settings for `seqserve archive` and `seqserve torchserve` (its flags; the
# host and inference port are those of `seqserve serve`).
TS_BATCH_SIZE = 32  # batchSize
TS_MAX_BATCH_DELAY_MS = 5  # maxBatchDelay
TS_MANAGEMENT_PORT = 8081
TS_METRICS_PORT = 8082


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    grpc_port: int
    workers: int
    request_timeout_s: float
    read_timeout_s: float
    max_connections: int
    rank_timeout_s: float
    engine: str  # empty: the spec's
    dispatch: str
    nnodes: int
    master_port: int
    cluster_key: str
    cluster_interface: str  # empty: found
    join_timeout_s: float
    auth_token: str
    allow_updates: bool
    max_update_bytes: int
    updates_dir: str  # empty: none
    reload_roots: str  # os.pathsep-separated; empty: none (serve fills in its default)
    allow_shared_memory: bool
    limits: Limits
    batch: BatchSettings

    @property
    def front_connections(self) -> int:
        """Each front process's share of --max-connections (the bound is the host's)."""
        return -(-self.max_connections // self.workers)

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> ServerSettings:
        """Settings from option values by name; an option not given takes its default."""
        unknown = set(values) - set(BY_NAME)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        given = {o.name: values.get(o.name, o.default) for o in OPTIONS}
        for o in OPTIONS:
            if o.choices and given[o.name] not in o.choices:
                allowed = " or ".join(c for c in o.choices if c)
                raise ValueError(f"{o.flag} must be {allowed}, not {given[o.name]!r}")
            if o.floor is not None and given[o.name] < o.floor:
                raise ValueError(f"{o.flag} must be at least {o.floor:g}, not {given[o.name]!r}")

        def pick(kind: Any) -> dict[str, Any]:
            return {f.name: given[f.name] for f in dataclasses.fields(kind) if f.name in given}

        return cls(
            **pick(cls), limits=Limits(**pick(Limits)), batch=BatchSettings(**pick(BatchSettings))
        )


def defaults(**overrides: Any) -> ServerSettings:
    """The default settings, with `overrides` by option name (tests, embedding)."""
    return ServerSettings.of(overrides)


def limits(values: Mapping[str, Any]) -> Limits:
    """Limits from string or number values by name (TorchServe's handler options)."""
    names = [f.name for f in dataclasses.fields(Limits)]
    return defaults(**{n: int(values[n]) for n in names if n in values}).limits


def add_flags(parser: argparse.ArgumentParser) -> None:
    for o in OPTIONS:
        raw = os.environ.get(o.env)
        if o.type is bool:  # a switch: on with the flag, or with the variable set to 1/true/yes
            on = (raw or "").strip().lower() in ("1", "true", "yes")
            parser.add_argument(
                o.flag, action="store_true", default=on, help=f"{o.help} (env {o.env}=1)"
            )
            continue
        parser.add_argument(
            o.flag,
            type=o.type,
            default=o.type(raw) if raw is not None else o.default,
            help=f"{o.help} (env {o.env}, default {o.shown or o.default})",
        )
    parser.add_argument(
        "--model",
        type=Path,
        default=os.environ.get("SEQSERVE_MODEL") or None,  # empty: the demo, not Path("")
        help="model.yaml to serve (env SEQSERVE_MODEL; default: the built-in demo)",
    )


def from_args(args: argparse.Namespace) -> ServerSettings:
    """The settings of `seqserve serve`; reloads may read, unless --reload-roots says otherwise,
    the model's folder and --updates-dir."""
    settings = ServerSettings.of({o.name: getattr(args, o.name) for o in OPTIONS})
    if settings.reload_roots:
        return settings
    model: Path | None = args.model
    roots = [str(model if model.is_dir() else model.parent)] if model else []
    roots += [settings.updates_dir] if settings.updates_dir else []
    return dataclasses.replace(settings, reload_roots=os.pathsep.join(roots))


def markdown_table() -> str:
    """The settings table of docs/http.md."""
    lines = ["| flag | environment | default | what |", "| --- | --- | --- | --- |"]
    for o in OPTIONS:
        lines.append(f"| `{o.flag}` | `{o.env}` | {o.shown or o.default} | {o.help} |")
    lines.append("| `--model` | `SEQSERVE_MODEL` | the built-in demo | model.yaml to serve |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
