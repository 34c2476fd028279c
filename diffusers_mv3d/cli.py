"""The ``diffusers-mv3d`` command line: generate, render, train-foundation, train, evaluate, demo."""

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-mv3d", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("generate", "render", "train-foundation", "train", "train-reconstructor", "evaluate", "demo"):
        sub.add_parser(name, help=f"{name} (not yet)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"diffusers-mv3d {args.command}: not yet implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
