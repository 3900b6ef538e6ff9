"""``bandpo compare``: the same task and budget for several methods and seeds; one table, one figure.

The figure has the layout of the paper's Figure 3 (clip rate; low-p clip-high share; entropy) plus
the reward. ``--preset fast`` is a few-minute smoke comparison; ``--preset default`` the real run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bandpo.rules import METHODS

TABLE_COLUMNS = (
    "method", "seed", "steps", "accuracy_before", "accuracy_after", "clip_ratio/region_mean",
    "clip_ratio/low_p_high_share", "entropy", "reward", "wall_seconds",
)


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``bandpo compare``."""
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["band", "clip", "clip-higher"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--preset", choices=["default", "fast"], default="fast")
    parser.add_argument("--model", default="smollm2", help="as for bandpo train")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: the preset's)")
    parser.add_argument("--config", type=Path, help="YAML of BandPOConfig fields shared by every run")
    parser.add_argument("--output-dir", type=Path, default=Path("bandpo-compare"))
    return parser


def run_arguments(args: argparse.Namespace, method: str, seed: int) -> argparse.Namespace:
    """The ``bandpo train`` arguments of one (method, seed) run."""
    from bandpo.cli.train import add_train_arguments

    train_args = add_train_arguments(argparse.ArgumentParser()).parse_args([])
    train_args.preset, train_args.model, train_args.config = args.preset, args.model, args.config
    train_args.method, train_args.seed, train_args.steps = method, seed, args.steps
    train_args.output_dir = args.output_dir / f"{method}-seed{seed}"
    return train_args


def table_row(result) -> dict:
    """One row of the comparison table from a RunResult."""
    row = {"method": result.method, "seed": result.seed, "steps": result.steps,
           "accuracy_before": result.accuracy_before, "accuracy_after": result.accuracy_after,
           "wall_seconds": round(result.wall_seconds, 1)}
    row.update({name: result.final_metrics.get(name) for name in TABLE_COLUMNS if name not in row})
    return row


def format_table(rows: list[dict]) -> str:
    """A Markdown table of ``rows`` (numbers to 3 significant digits)."""
    def cell(value):
        return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(row[name]) for name in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> int:
    """Entry point of ``bandpo compare``: every run validated first, then trained one after another."""
    from bandpo.cli.train import build_settings, execute_run, prepare_run, read_metrics
    from bandpo.training.models import ModelNotFoundError
    from bandpo.training.plots import plot_comparison

    try:
        planned = []
        for method in args.methods:
            for seed in args.seeds:
                settings = build_settings(run_arguments(args, method, seed))
                planned.append((settings, prepare_run(settings)))
    except (ValueError, ModelNotFoundError) as error:
        print(f"bandpo compare: error: {error}", file=sys.stderr)
        return 2
    rows, curves = [], {}
    for settings, prepared in planned:
        print(f"== {prepared.config.clip_method} seed {prepared.config.seed}", flush=True)
        result = execute_run(settings, prepared)
        rows.append(table_row(result))
        curves.setdefault(result.method, []).append(read_metrics(settings.output_dir / "metrics.jsonl"))
    table = format_table(rows)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "table.md").write_text(table + "\n")
    (args.output_dir / "table.json").write_text(json.dumps(rows, indent=2))
    figure = plot_comparison(curves, args.output_dir / "compare.png", f"{args.model}, preset {args.preset}")
    print(table)
    print(f"table {args.output_dir / 'table.md'}   figure {figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_compare_arguments(argparse.ArgumentParser(prog="bandpo compare", description=__doc__))
    return run_compare(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
