"""The ``bandpo`` command: ``bounds``, ``train`` and ``compare``."""

from __future__ import annotations

import argparse
import sys

from bandpo.cli.bounds import add_bounds_arguments, run_bounds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bandpo", description="BandPO: probability-aware ratio bounds for LLM RL")
    commands = parser.add_subparsers(dest="command", required=True)
    add_bounds_arguments(commands.add_parser("bounds", help="show the Band operator's ratio bounds"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) if hasattr(args, "run") else run_bounds(args)
    except ValueError as error:
        print(f"bandpo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
