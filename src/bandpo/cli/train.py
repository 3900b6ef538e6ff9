"""``bandpo train``: GRPO with a ratio-bound rule (BandPO by default) on a verifiable-reward task.

Settings are layered: the preset's recipe, then the YAML ``--config`` (any BandPOConfig /
GRPOConfig field, TRL style, plus ``model_name_or_path``, ``dataset_name``, ``dataset_train_split``,
``prompt_column``, ``answer_column``, ``eval_problems``), then the command-line flags. Everything is
validated (method, delta, YAML keys, model path, dataset columns) before the model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bandpo.divergences import DIVERGENCES
from bandpo.rules import METHODS

PRESETS: dict[str, dict] = {
    # SmolLM2-135M on 2 CPU cores: ~20 s per generation of 32 completions, then two off-policy updates.
    "default": {
        "max_steps": 24,
        "eval_problems": 64,
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 16,
        "num_generations": 8,
        "steps_per_generation": 2,
        "max_completion_length": 12,
    },
    # A couple of minutes with SmolLM2 (seconds with a tiny model): smoke runs and `bandpo compare --preset fast`.
    "fast": {
        "max_steps": 4,
        "eval_problems": 16,
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "steps_per_generation": 2,
        "max_completion_length": 8,
    },
}
COMMON_SETTINGS = {
    "temperature": 1.0,
    "beta": 0.0,
    "loss_type": "grpo",
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 8,
    "save_total_limit": 1,
    "report_to": ["tensorboard"],
    "use_cpu": True,
    "bf16": False,
    "disable_tqdm": True,
    "shuffle_dataset": True,
}
"""Recipe settings shared by the presets (GRPOConfig fields); beta 0 skips the reference model."""
RUN_KEYS = {
    "model_name_or_path": "model",
    "dataset_name": "dataset",
    "dataset_train_split": "split",
    "prompt_column": "prompt_column",
    "answer_column": "answer_column",
    "eval_problems": "eval_problems",
}
"""YAML keys (TRL script style) that are not GRPOConfig fields, and the run setting each sets."""


@dataclass
class RunSettings:
    """Everything one training run needs, validated; ``trainer_fields`` become BandPOConfig(**...)."""

    model: str = "smollm2"
    dataset: str | None = None
    split: str = "train"
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    eval_problems: int = 64
    resume: bool = False
    trainer_fields: dict = field(default_factory=dict)

    @property
    def output_dir(self) -> Path:
        return Path(self.trainer_fields["output_dir"])


@dataclass(frozen=True)
class RunResult:
    """What a finished (or interrupted) run measured."""

    output_dir: str
    method: str
    seed: int
    steps: int
    accuracy_before: float | None
    accuracy_after: float | None
    eval_count: int
    wall_seconds: float
    interrupted: bool
    final_metrics: dict
    examples_after: list

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``bandpo train`` (every default None: unset flags leave preset/YAML values alone)."""
    parser.add_argument("--config", type=Path, help="YAML file of BandPOConfig/GRPOConfig fields (TRL style)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="recipe (default: default)")
    parser.add_argument("--model", help="'smollm2' (embedded default), a hub id, a local folder or a .gguf file")
    parser.add_argument("--dataset", help="hub dataset id or local .jsonl/.json/.parquet/.csv (default: arithmetic)")
    parser.add_argument("--split", help="dataset split (hub datasets; default train)")
    parser.add_argument("--prompt-column", help="prompt column of --dataset (default prompt)")
    parser.add_argument("--answer-column", help="answer column of --dataset (default answer)")
    parser.add_argument("--method", choices=METHODS, help="ratio-bound rule (default band)")
    parser.add_argument("--divergence", choices=sorted(DIVERGENCES), help="Band's f-divergence (default kl)")
    parser.add_argument("--delta", type=float, help="Band's trust-region radius (> 0; default 0.05)")
    parser.add_argument("--steps", type=int, help="optimizer steps (max_steps)")
    parser.add_argument("--eval-problems", type=int, help="held-out problems evaluated before and after")
    parser.add_argument("--seed", type=int, help="seed (default 42)")
    parser.add_argument("--output-dir", type=Path, help="where checkpoints, metrics and plots go")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    return parser


def read_yaml_config(path: Path) -> dict:
    """The YAML mapping in ``path`` (ValueError if missing or not a mapping)."""
    import yaml

    if not path.is_file():
        raise ValueError(f"--config: file {path} not found")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"--config: {path} must hold a mapping of field: value, got {type(loaded).__name__}")
    return loaded


def check_flags(args: argparse.Namespace) -> None:
    """ValueError for flag values that argparse's types cannot rule out."""
    if args.delta is not None and not args.delta > 0:
        raise ValueError(f"--delta must be > 0, got {args.delta}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.eval_problems is not None and args.eval_problems < 1:
        raise ValueError(f"--eval-problems must be >= 1, got {args.eval_problems}")


def build_settings(args: argparse.Namespace) -> RunSettings:
    """Preset < YAML < flags, merged into RunSettings; unknown YAML keys are errors."""
    from bandpo.integrations.trl import BandPOConfig

    check_flags(args)
    recipe = dict(PRESETS[args.preset])
    settings = RunSettings(eval_problems=recipe.pop("eval_problems"))
    fields = {**COMMON_SETTINGS, **recipe, "seed": 42}
    config_fields = {f.name for f in dataclasses.fields(BandPOConfig)}
    for key, value in (read_yaml_config(args.config) if args.config else {}).items():
        if key in RUN_KEYS:
            setattr(settings, RUN_KEYS[key], value)
        elif key in config_fields:
            fields[key] = value
        else:
            raise ValueError(
                f"--config: unknown key {key!r}: not a BandPOConfig/GRPOConfig field nor one of {', '.join(RUN_KEYS)}"
            )
    flag_fields = {
        "clip_method": args.method,
        "divergence": args.divergence,
        "bandpo_delta": args.delta,
        "max_steps": args.steps,
        "seed": args.seed,
        "output_dir": None if args.output_dir is None else str(args.output_dir),
    }
    fields.update({key: value for key, value in flag_fields.items() if value is not None})
    fields.setdefault("output_dir", "bandpo-train")
    for flag in ("model", "dataset", "split", "prompt_column", "answer_column", "eval_problems"):
        if getattr(args, flag) is not None:
            setattr(settings, flag, getattr(args, flag))
    settings.resume = args.resume
    settings.trainer_fields = fields
    return settings


def prepare_data(settings: RunSettings, seed: int):
    """(train_dataset, held_out_problems); the arithmetic task unless --dataset is given."""
    from datasets import Dataset

    if settings.dataset is None:
        from bandpo.training.arithmetic import ArithmeticTask

        train, held_out = ArithmeticTask().split(settings.eval_problems, seed)
        return Dataset.from_list(train), held_out
    from bandpo.training.data import DatasetSpec, load_prompt_dataset

    spec = DatasetSpec(settings.dataset, settings.split, settings.prompt_column, settings.answer_column)
    dataset = load_prompt_dataset(spec)
    if not 0 < settings.eval_problems < len(dataset):
        raise ValueError(f"--eval-problems must be in 1..{len(dataset) - 1} for {settings.dataset}")
    parts = dataset.train_test_split(test_size=settings.eval_problems, seed=seed)
    return parts["train"], parts["test"].to_list()


def last_checkpoint(output_dir: Path) -> str:
    """The newest checkpoint folder in ``output_dir`` (ValueError when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if found is None:
        raise ValueError(f"--resume: no checkpoint-* folder in {output_dir}")
    return found


def read_metrics(path: Path) -> list[dict]:
    """The JSONL metric records of a run."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_training_metrics(records: list[dict]) -> dict:
    """Mean of the last quarter of the run's per-step records, for the summary."""
    from bandpo.training.plots import PANELS, metric_series

    summary = {}
    for metric, _ in PANELS:
        _, values = metric_series(records, metric)
        if len(values):
            summary[metric] = float(values[-max(1, len(values) // 4) :].mean())
    return summary


@dataclass
class PreparedRun:
    """A validated run: its trainer config, checkpoint to resume, model source and data."""

    config: object
    resume_from: str | None
    source: object
    train_dataset: object
    held_out: list


def prepare_run(settings: RunSettings) -> PreparedRun:
    """Every check that needs no model: trainer fields, checkpoint, model path, dataset columns."""
    from bandpo.integrations.trl import BandPOConfig
    from bandpo.training.models import resolve_model

    config = BandPOConfig(**settings.trainer_fields)
    resume_from = last_checkpoint(settings.output_dir) if settings.resume else None
    source = resolve_model(settings.model)
    train_dataset, held_out = prepare_data(settings, config.seed)
    return PreparedRun(config, resume_from, source, train_dataset, held_out)


def execute_run(settings: RunSettings, prepared: PreparedRun, quiet: bool = False) -> RunResult:
    """Load, evaluate, train, evaluate; writes metrics.jsonl, training.png and summary.json."""
    from transformers import PrinterCallback

    from bandpo.integrations.trl import BandPOTrainer
    from bandpo.training.arithmetic import correctness_reward
    from bandpo.training.callbacks import CompactProgressCallback, GracefulInterruptCallback, JsonlMetricsCallback
    from bandpo.training.evaluate import evaluate_accuracy
    from bandpo.training.models import load_model_and_tokenizer
    from bandpo.training.plots import plot_training

    start = time.perf_counter()
    config, held_out = prepared.config, prepared.held_out
    model, tokenizer = load_model_and_tokenizer(prepared.source)
    eval_tokens = config.max_completion_length
    before = evaluate_accuracy(model, tokenizer, held_out, eval_tokens)
    if not quiet:
        print(f"accuracy before: {before.accuracy:.1%} on {before.count} held-out problems", flush=True)
    metrics_path = settings.output_dir / "metrics.jsonl"
    if prepared.resume_from is None and metrics_path.exists():
        metrics_path.unlink()
    interrupt = GracefulInterruptCallback()
    trainer = BandPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=correctness_reward,
        args=config,
        train_dataset=prepared.train_dataset,
        callbacks=[JsonlMetricsCallback(metrics_path), interrupt]
        + ([] if quiet else [CompactProgressCallback()]),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=prepared.resume_from)
    after = None if interrupt.interrupted else evaluate_accuracy(model, tokenizer, held_out, eval_tokens)
    records = read_metrics(metrics_path)
    if records:
        plot_training(records, settings.output_dir / "training.png", f"{settings.model} {config.clip_method}")
    result = RunResult(
        output_dir=str(settings.output_dir),
        method=config.clip_method,
        seed=config.seed,
        steps=trainer.state.global_step,
        accuracy_before=before.accuracy,
        accuracy_after=None if after is None else after.accuracy,
        eval_count=before.count,
        wall_seconds=time.perf_counter() - start,
        interrupted=interrupt.interrupted,
        final_metrics=final_training_metrics(records),
        examples_after=[] if after is None else after.examples,
    )
    (settings.output_dir / "summary.json").write_text(json.dumps(result.to_json(), indent=2))
    return result


def format_summary(result: RunResult, settings: RunSettings) -> str:
    """The one-screen summary printed at the end of ``bandpo train``."""
    fields = settings.trainer_fields
    rule = result.method
    if rule == "band":
        rule += f" ({fields.get('divergence', 'kl')}, delta {fields.get('bandpo_delta', 0.05)})"
    lines = [
        "=" * 72,
        f"bandpo train  model={settings.model}  method={rule}  seed={result.seed}",
        f"steps {result.steps}   wall time {result.wall_seconds / 60:.1f} min",
    ]
    if result.interrupted:
        lines.append(f"INTERRUPTED: checkpoint saved; continue with --resume --output-dir {result.output_dir}")
    else:
        gain = 100 * (result.accuracy_after - result.accuracy_before)
        lines.append(
            f"held-out accuracy ({result.eval_count} problems, greedy): "
            f"{result.accuracy_before:.1%} -> {result.accuracy_after:.1%}  ({gain:+.1f} points)"
        )
    for metric, value in result.final_metrics.items():
        lines.append(f"  last-quarter mean {metric:<30} {value:.4f}")
    for prompt, completion, answer in result.examples_after:
        lines.append(f"  {prompt!r} -> {completion.strip()!r} (answer {answer})")
    out = Path(result.output_dir)
    lines += [
        f"metrics {out / 'metrics.jsonl'}   tensorboard {out / 'runs'}",
        f"plot    {out / 'training.png'}   summary {out / 'summary.json'}",
        "=" * 72,
    ]
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``bandpo train``; returns the exit status (2 for a bad configuration, 130 if interrupted)."""
    from bandpo.training.models import ModelNotFoundError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        settings = build_settings(args)
        prepared = prepare_run(settings)
    except (ValueError, ModelNotFoundError) as error:
        print(f"bandpo train: error: {error}", file=sys.stderr)
        return 2
    result = execute_run(settings, prepared)
    print(format_summary(result, settings))
    return 130 if result.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="bandpo train", description=__doc__))
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
