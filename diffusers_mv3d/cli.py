"""The ``diffusers-mv3d`` command line: generate, render, train-foundation, train,
train-reconstructor, train-baseline, build-captioner, evaluate, demo.

Each sub-command lives beside the code it drives and registers itself with an
``add_parser(subparsers)`` function that sets ``func`` (called with the parsed namespace).
"""

import argparse
import sys
from typing import List, Optional

from . import captioning, demo, generate
from .data import render_dataset
from .evaluation import evaluate
from .training.commands import add_parsers as add_trainer_parsers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-mv3d", description="TuneMV3D multi-view 3D generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    generate.add_parser(sub)
    render_dataset.add_parser(sub)
    add_trainer_parsers(sub)
    captioning.add_parser(sub)
    evaluate.add_parser(sub)
    demo.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run a sub-command; a ValueError (bad input, named by the library) becomes a one-line message and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as error:
        print(f"diffusers-mv3d {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
