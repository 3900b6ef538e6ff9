"""``bandpo compare``: several clip methods (ratio-bound rules) over several seeds at one budget; one
table, one figure.

Runs are resumable: the same command after an interruption reuses every finished run (see
`bandpo.training.comparison`). Presets: ``fast`` (one seed, about a minute per method),
``default``, and ``study`` (the paper's update regime; ``docs/study``). ``fast`` and ``default``
compare the four published clip methods on seed 0 unless ``--clip-methods`` / ``--seeds`` say
otherwise; ``study`` runs by default exactly the rules and seeds committed in ``docs/study`` (all
seven rules, seeds 0-4), so that ``bandpo compare --preset study --output-dir docs/study`` alone
reproduces that folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bandpo.rules import CLIP_METHODS
from bandpo.training.settings import DEFAULT_CLIP_METHODS, PRESETS, STUDY_CLIP_METHODS, STUDY_SEEDS, comparison_defaults


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``bandpo compare``."""
    parser.add_argument("--clip-methods", nargs="+", choices=CLIP_METHODS, metavar="CLIP_METHOD",
                        help=f"ratio-bound rules to compare, of {', '.join(CLIP_METHODS)} "
                             f"(default: {' '.join(STUDY_CLIP_METHODS)} for --preset study, else "
                             f"{' '.join(DEFAULT_CLIP_METHODS)})")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help=f"default: {' '.join(map(str, STUDY_SEEDS))} for --preset study, else 0")
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

    default_clip_methods, default_seeds = comparison_defaults(args.preset)
    clip_methods = list(args.clip_methods or default_clip_methods)
    seeds = list(default_seeds if args.seeds is None else args.seeds)
    for flag, values in (("--clip-methods", clip_methods), ("--seeds", seeds)):
        repeated = sorted({str(value) for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(f"{flag} lists {', '.join(repeated)} more than once (each run has one folder)")
    return plan_comparison(
        args.preset, clip_methods, seeds, args.output_dir, model=args.model, config=args.config,
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
