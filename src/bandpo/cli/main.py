"""The ``bandpo`` command: ``bounds``, ``train`` and ``compare``."""

from __future__ import annotations

import argparse
import sys

from bandpo.cli.bounds import add_bounds_arguments, run_bounds
from bandpo.cli.compare import add_compare_arguments, run_compare
from bandpo.cli.train import add_train_arguments, run_train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bandpo", description="BandPO: probability-aware ratio bounds for LLM RL")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, add_arguments, run, help_text in (
        ("bounds", add_bounds_arguments, run_bounds, "show the Band operator's ratio bounds (table, figures)"),
        ("train", add_train_arguments, run_train, "train a model with BandPO through TRL (offline default)"),
        ("compare", add_compare_arguments, run_compare, "compare methods and seeds on the same task and budget"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"bandpo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
