"""``bandpo train``: GRPO with a ratio-bound rule (BandPO by default) on a verifiable-reward task.

Settings are layered: the preset's recipe, then the YAML ``--config`` (any BandPOConfig /
GRPOConfig field, TRL style, plus ``model_name_or_path``, ``dataset_name``, ``dataset_train_split``,
``prompt_column``, ``answer_column``, ``eval_problems``, ``eval_samples``, ``held_out_seed``), then
the command-line flags. Everything (types, ranges, output folder, model path, dataset and its
columns, a finished run already in the output folder) is checked before the model is loaded; a bad
configuration exits with status 2. SIGINT / SIGTERM save a checkpoint at the end of the current step
and exit with 130 / 143; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bandpo.divergences import DIVERGENCES
from bandpo.rules import CLIP_METHODS
from bandpo.training.settings import PRESETS


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``bandpo train`` (every default None: unset flags leave preset/YAML values alone)."""
    parser.add_argument("--config", type=Path, help="YAML file of BandPOConfig/GRPOConfig fields (TRL style)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="recipe (default: default)")
    parser.add_argument("--model", help="'smollm2' (embedded default), a hub id, a local folder or a .gguf file")
    parser.add_argument("--dataset", help="hub dataset id or local .jsonl/.json/.parquet/.csv (default: arithmetic)")
    parser.add_argument("--split", help="dataset split (hub datasets; default train)")
    parser.add_argument("--prompt-column", help="prompt column of --dataset (default prompt)")
    parser.add_argument("--answer-column", help="answer column of --dataset (default answer)")
    parser.add_argument("--clip-method", choices=CLIP_METHODS, help="ratio-bound rule (default band)")
    parser.add_argument("--divergence", choices=sorted(DIVERGENCES),
                        help="f-divergence of the band rules (band, band-relax, band-upper, band-lower; default kl)")
    parser.add_argument("--delta", type=float, help="trust-region radius of the band rules (> 0; default 0.05)")
    parser.add_argument("--steps", type=int, help="optimizer steps (max_steps)")
    parser.add_argument("--eval-problems", type=int, help="held-out problems evaluated before and after")
    parser.add_argument("--eval-samples", type=int, help="k samples per held-out problem for pass@k (0: greedy only)")
    parser.add_argument("--seed", type=int, help="seed (default 42)")
    parser.add_argument("--output-dir", type=Path, help="where checkpoints, metrics and plots go")
    resumption = parser.add_mutually_exclusive_group()
    resumption.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    resumption.add_argument("--overwrite", action="store_true",
                            help="replace the run (finished or not) already in --output-dir")
    return parser


def configure_train(args: argparse.Namespace):
    """The validated run the flags describe (ValueError for a bad configuration)."""
    from bandpo.training.run import prepare_run
    from bandpo.training.settings import build_settings

    settings = build_settings(
        args.preset,
        args.config,
        run_overrides={
            "model": args.model, "dataset": args.dataset, "split": args.split, "prompt_column": args.prompt_column,
            "answer_column": args.answer_column, "eval_problems": args.eval_problems, "eval_samples": args.eval_samples,
        },
        trainer_overrides={
            "bandpo_clip_method": args.clip_method, "bandpo_divergence": args.divergence, "bandpo_delta": args.delta,
            "max_steps": args.steps, "seed": args.seed,
            "output_dir": None if args.output_dir is None else str(args.output_dir),
        },
        resume=args.resume,
        overwrite=args.overwrite,
    )
    return prepare_run(settings)


def describe_rule(config) -> str:
    """The bound rule with its parameters, as the trainer uses them."""
    clip_method = config.bandpo_clip_method
    eps_low, eps_high = config.fixed_margins()
    if clip_method.startswith("band"):
        band = (f"{clip_method} ({config.bandpo_divergence}, delta {config.bandpo_delta}, "
                f"upper_max {config.bandpo_upper_max}")
        fixed_side = {"band-relax": f", relaxed to {eps_low}/{eps_high}", "band-upper": f", lower 1 - {eps_low}",
                      "band-lower": f", upper 1 + {eps_high}"}
        return band + fixed_side.get(clip_method, "") + ")"
    if clip_method == "dcpo":
        return f"dcpo ({config.bandpo_dcpo_eps_low}/{config.bandpo_dcpo_eps_high}, upper_max {config.bandpo_upper_max})"
    return f"{clip_method} ({eps_low}/{eps_high})"


def format_summary(result, prepared) -> str:
    """The one-screen summary printed at the end of a finished ``bandpo train``."""
    gain = 100 * (result.accuracy_after - result.accuracy_before)
    lines = [
        "=" * 72,
        f"bandpo train  model={prepared.settings.model}  clip_method={describe_rule(prepared.config)}  seed={result.seed}",
        f"steps {result.steps}   wall time {result.wall_seconds / 60:.1f} min",
        f"held-out accuracy ({result.eval_count} problems, greedy): "
        f"{result.accuracy_before:.1%} -> {result.accuracy_after:.1%}  ({gain:+.1f} points)",
    ]
    if result.eval_samples:
        lines.append(
            f"held-out pass@{result.eval_samples} (T = 1): {result.pass_at_k_before:.1%} -> {result.pass_at_k_after:.1%}"
        )
    for metric, value in result.final_metrics.items():
        lines.append(f"  last-quarter mean {metric:<30} {value:.4f}")
    for prompt, completion, answer in result.examples_after:
        lines.append(f"  {prompt!r} -> {completion.strip()!r} (answer {answer})")
    out = prepared.settings.output_dir
    lines += [
        f"metrics {out / 'metrics.jsonl'}   tensorboard {out / 'runs'}",
        f"plot    {out / 'training.png'}   summary {out / 'summary.json'}",
        "=" * 72,
    ]
    return "\n".join(lines)


def run_train(prepared) -> int:
    """Trains the prepared run and prints its summary; `Interrupted` (130 / 143) after saying how to resume."""
    from bandpo.training.interrupts import Interrupted
    from bandpo.training.run import execute_run

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        result = execute_run(prepared)
    except Interrupted:
        print(f"bandpo train: interrupted; continue with --resume --output-dir {prepared.settings.output_dir} "
              "(from its last checkpoint)", file=sys.stderr, flush=True)
        raise
    print(format_summary(result, prepared))
    return 0


def main(argv: list[str] | None = None) -> int:
    from bandpo.cli.main import main as bandpo_main

    return bandpo_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
