"""The `seqserve` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.bench.options import add_flags as bench_flags
from serving.commands.update import add_flags as update_flags
from serving.commands.worker import add_flags as worker_flags
from serving.config import ModelSpec
from serving.errors import SeqServeError
from serving.settings import (
    BY_NAME,
    TS_BATCH_SIZE,
    TS_MANAGEMENT_PORT,
    TS_MAX_BATCH_DELAY_MS,
    TS_METRICS_PORT,
    add_flags,
)


def _demo_model(args: argparse.Namespace) -> None:
    from serving.commands.demo import DEMO, REALISTIC, write_model

    path = write_model(Path(args.dir), REALISTIC if args.realistic else DEMO)
    print(f"wrote {path} and {path.parent / 'weights.safetensors'}")


def _serve(args: argparse.Namespace) -> int:
    from serving.fronts.server import ports_taken
    from serving.settings import from_args

    settings = from_args(args)
    taken = ports_taken(settings)  # before torch, the spec and the weights load
    if taken:
        print(f"seqserve: error: {taken}", file=sys.stderr, flush=True)
        return 2
    from serving.config import load_spec

    if settings.workers > 1:  # the parent stays torch-free: the engine process checks weights
        from serving.commands.exposure import refused
        from serving.commands.host import run_host

        return (
            2
            if refused(settings)
            else run_host(load_spec(args.model) if args.model else None, settings)
        )
    from serving.commands.demo import demo_spec
    from serving.commands.serve import serve
    from serving.engine.devices import gpu_count

    spec = load_spec(args.model) if args.model else demo_spec(gpu_count())
    return serve(spec, settings)


def _spec(args: argparse.Namespace) -> ModelSpec:
    from serving.commands.demo import demo_spec
    from serving.config import load_spec

    return load_spec(args.model) if args.model else demo_spec()


def _archive(args: argparse.Namespace) -> None:
    from serving.commands.torchserve import archive

    mar = archive(
        _spec(args),
        Path(args.export_path),
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
    )
    print(f"wrote {mar}")


def _torchserve(args: argparse.Namespace) -> int:
    from serving.commands.torchserve import run

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return run(
        _spec(args),
        workdir,
        host=args.host,
        port=args.port,
        management_port=args.management_port,
        metrics_port=args.metrics_port,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
    )


def _bench(args: argparse.Namespace) -> int:
    from serving.bench.run import run

    return run(args)


def _update(args: argparse.Namespace) -> int:
    from serving.commands.update import run

    return run(args)


def _worker(args: argparse.Namespace) -> int:
    from serving.commands.worker import run

    return run(args)


def _batching_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="model.yaml (default: the built-in demo)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=TS_BATCH_SIZE,
        help=f"TorchServe batchSize (default {TS_BATCH_SIZE})",
    )
    p.add_argument(
        "--max-batch-delay-ms",
        type=int,
        default=TS_MAX_BATCH_DELAY_MS,
        help=f"TorchServe maxBatchDelay in ms (default {TS_MAX_BATCH_DELAY_MS})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqserve", description="Serve column-wise sharded TorchRec sequence embeddings."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-model", help="write DIR/model.yaml and seeded safetensors weights")
    demo.add_argument("dir", help="folder to write into (created if missing)")
    demo.add_argument(
        "--realistic",
        action="store_true",
        help="a sequential recommender's tables instead: dims 16-256, int8 and fp16 tables, "
        "a table-wise table (about 67 MB of float32 weights)",
    )
    demo.set_defaults(run=_demo_model)
    serve = sub.add_parser(
        "serve", help="serve a model (the built-in demo by default) over HTTP with FastAPI"
    )
    add_flags(serve)
    serve.set_defaults(run=_serve)
    arch = sub.add_parser("archive", help="build a TorchServe .mar of the handler and a model")
    _batching_flags(arch)
    arch.add_argument("--export-path", default="model_store", help="folder for the .mar")
    arch.set_defaults(run=_archive)
    ts = sub.add_parser("torchserve", help="archive a model and serve it with TorchServe (Java 17)")
    _batching_flags(ts)
    host, port = BY_NAME["host"].default, BY_NAME["port"].default  # those of `seqserve serve`
    ts.add_argument(
        "--host",
        default=host,
        help=f"address for inference and metrics (default {host}; management stays on it)",
    )
    ts.add_argument("--port", type=int, default=port, help=f"inference port (default {port})")
    ts.add_argument("--management-port", type=int, default=TS_MANAGEMENT_PORT)
    ts.add_argument("--metrics-port", type=int, default=TS_METRICS_PORT)
    ts.add_argument(
        "--workdir",
        default="model_store/run",
        help="archive, config, key file and logs go here (default model_store/run)",
    )
    ts.set_defaults(run=_torchserve)
    bench = sub.add_parser(
        "bench", help="load a server over HTTP: req/s, latency, exact answers, results and plot"
    )
    bench_flags(bench)
    bench.set_defaults(run=_bench)
    update = sub.add_parser(
        "update", help="push a row delta or a full weights reload to a running server"
    )
    update_flags(update)
    update.set_defaults(run=_update)
    worker = sub.add_parser(
        "worker", help="run this host's ranks of a distributed engine whose front is elsewhere"
    )
    worker_flags(worker)
    worker.set_defaults(run=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (SeqServeError, ValueError) as e:
        print(f"seqserve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
