"""The `seqserve` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.errors import SeqServeError
from serving.settings import add_flags


def _demo_model(args: argparse.Namespace) -> None:
    from serving.demo import write_model

    path = write_model(Path(args.dir))
    print(f"wrote {path} and {path.parent / 'weights.safetensors'}")


def _serve(args: argparse.Namespace) -> int:
    from serving.config import load_spec
    from serving.demo import demo_spec
    from serving.engine.sharded import gpu_count
    from serving.server import serve
    from serving.settings import from_args

    settings = from_args(args)
    spec = load_spec(args.model) if args.model else demo_spec(gpu_count())
    return serve(spec, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqserve", description="Serve column-wise sharded TorchRec sequence embeddings."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-model", help="write DIR/model.yaml and seeded safetensors weights")
    demo.add_argument("dir", help="folder to write into (created if missing)")
    demo.set_defaults(run=_demo_model)
    serve = sub.add_parser(
        "serve", help="serve a model (the built-in demo by default) over HTTP with FastAPI"
    )
    add_flags(serve)
    serve.set_defaults(run=_serve)
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
