"""``bandpo compare``: several clip methods (ratio-bound rules) over several seeds at one budget; one
table, one figure.

Runs are resumable: the same command after an interruption reuses every finished run (see
`bandpo.training.comparison`). Presets: ``fast`` (one seed, about a minute per method),
``default``, and ``study`` (three seeds in the paper's update regime; ``docs/study``). Every preset
compares the four published clip methods unless ``--clip-methods`` says otherwise (``band-relax``
too is accepted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bandpo.rules import CLIP_METHODS
from bandpo.training.settings import DEFAULT_CLIP_METHODS, PRESETS

STUDY_SEEDS = [0, 1, 2]
"""Seeds of --preset study when --seeds is not given (other presets: seed 0)."""


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``bandpo compare``."""
    parser.add_argument("--clip-methods", nargs="+", choices=CLIP_METHODS, default=list(DEFAULT_CLIP_METHODS),
                        metavar="CLIP_METHOD",
                        help=f"ratio-bound rules to compare, of {', '.join(CLIP_METHODS)} "
                             f"(default: {' '.join(DEFAULT_CLIP_METHODS)})")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 for --preset study, else 0")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fast")
    parser.add_argument("--model", default="smollm2", help="as for bandpo train")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: the preset's)")
    parser.add_argument("--config", type=Path, help="YAML of BandPOConfig fields shared by every run")
    parser.add_argument("--held-out-seed", type=int, default=0, help="seed of the held-out split shared by all runs")
    parser.add_argument("--output-dir", type=Path, default=Path("bandpo-compare"))
    return parser


def configure_compare(args: argparse.Namespace):
    """Every run validated, and matched against earlier results, before anything is loaded."""
    from bandpo.training.comparison import plan_comparison

    seeds = args.seeds if args.seeds is not None else STUDY_SEEDS if args.preset == "study" else [0]
    for flag, values in (("--clip-methods", args.clip_methods), ("--seeds", seeds)):
        repeated = sorted({str(value) for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(f"{flag} lists {', '.join(repeated)} more than once (each run has one folder)")
    return plan_comparison(
        args.preset, args.clip_methods, seeds, args.output_dir, model=args.model, config=args.config,
        steps=args.steps, held_out_seed=args.held_out_seed,
    )


def run_compare(plan) -> int:
    from bandpo.training.comparison import run_comparison

    markdown, figure = run_comparison(plan)
    print(markdown)
    print(f"table {plan.output_dir / 'table.md'}   figure {figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from bandpo.cli.main import main as bandpo_main

    return bandpo_main(["compare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
