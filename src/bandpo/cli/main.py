"""The ``bandpo`` command: ``bounds``, ``train``, ``compare`` and ``check``.

Each subcommand is a pair: ``configure(args)`` checks the flags and returns what to do, raising
ValueError for a bad configuration, or ImportError for a missing or unsupported optional dependency
(TRL), both reported here, once, with exit status 2; ``run(plan)`` does it.

While ``run`` runs, SIGINT and SIGTERM stop the command with 128 + the signal (130, 143; see
`bandpo.training.interrupts`), an error writing a file (a full disk) is reported in one line with
status 1, and the output folders a plan locked are released at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from bandpo.cli.bounds import add_bounds_arguments, configure_bounds, run_bounds
from bandpo.cli.check import add_check_arguments, configure_check, run_check
from bandpo.cli.compare import add_compare_arguments, configure_compare, run_compare
from bandpo.cli.train import add_train_arguments, configure_train, run_train
from bandpo.training.files import release_all_locks
from bandpo.training.interrupts import Interrupted, stop_on_signals


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bandpo", description="BandPO: probability-aware ratio bounds for LLM RL")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, add_arguments, configure, run, help_text in (
        ("bounds", add_bounds_arguments, configure_bounds, run_bounds,
         "show the Band operator's ratio bounds (table, figures)"),
        ("train", add_train_arguments, configure_train, run_train,
         "train a model with BandPO through TRL (offline default)"),
        ("compare", add_compare_arguments, configure_compare, run_compare,
         "compare clip methods and seeds on the same task and budget (resumable)"),
        ("check", add_check_arguments, configure_check, run_check,
         "check a verl or OpenRLHF command line's BandPO settings with the engine's own parser, before any GPU"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(configure=configure, run=run)
    return parser


KNOWN_THIRD_PARTY_NOISE = (
    (FutureWarning, r"`\w*gradient_checkpointing\w*` is deprecated"),  # transformers 5, at every TRL step
)
"""Warnings the command line hides (the library itself leaves warning filters alone)."""


def main(argv: list[str] | None = None) -> int:
    for category, message in KNOWN_THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    args = build_parser().parse_args(argv)
    try:
        plan = args.configure(args)
    except (ValueError, ImportError) as error:
        print(f"bandpo {args.command}: error: {error}", file=sys.stderr)
        release_all_locks()
        return 2
    return run_plan(args.command, args.run, plan)


def stdout_flushes() -> bool:
    """Whether standard output still takes what was printed (not a full disk, a closed pipe)."""
    try:
        sys.stdout.flush()
    except OSError:
        return False
    return True


def run_plan(command: str, run, plan) -> int:
    """``run(plan)`` under the stop contract: its status; 130 / 143 for SIGINT / SIGTERM; 1, in one line,
    for a file that cannot be written (a full disk, a closed stdout)."""
    try:
        with stop_on_signals():
            status = run(plan)
            sys.stdout.flush()
        return status
    except Interrupted as interrupted:
        print(f"bandpo {command}: {interrupted}", file=sys.stderr, flush=True)
        return interrupted.exit_status
    except OSError as error:
        if not stdout_flushes():
            # Python flushes stdout again at exit, and would print a traceback: what is left goes nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = "" if error.filename is None else f" ({error.filename})"
        print(f"bandpo {command}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    finally:
        release_all_locks()


if __name__ == "__main__":
    sys.exit(main())
