"""The `seqserve` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.errors import SeqServeError


def _demo_model(args: argparse.Namespace) -> None:
    from serving.demo import write_model

    path = write_model(Path(args.dir))
    print(f"wrote {path} and {path.parent / 'weights.safetensors'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqserve", description="Serve column-wise sharded TorchRec sequence embeddings."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-model", help="write DIR/model.yaml and seeded safetensors weights")
    demo.add_argument("dir", help="folder to write into (created if missing)")
    demo.set_defaults(run=_demo_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except SeqServeError as e:
        print(f"seqserve: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
