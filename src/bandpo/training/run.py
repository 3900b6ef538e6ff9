"""One training run: validate everything (`prepare_run`), then load -> evaluate -> train ->
evaluate -> plot -> write (`execute_run`). ``bandpo train`` runs one; ``bandpo compare`` many.

A run's folder holds ``metrics.jsonl`` (one JSON record per log step), ``training.png``,
``summary.json`` (`RunResult`), TensorBoard events under ``runs/`` and the checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bandpo.integrations.trl import BandPOConfig
from bandpo.training.evaluate import EvalResult, evaluate
from bandpo.training.models import ModelSource, resolve_model
from bandpo.training.settings import RunSettings, check_engines, check_output_dir

EVAL_SAMPLING_SEED = 0
"""Seed of the pass@k samples: the same before and after training, and for every run."""


@dataclass(frozen=True)
class PreparedRun:
    """A validated run: its trainer config, the checkpoint to resume, the model source and the data."""

    settings: RunSettings
    config: BandPOConfig
    resume_from: str | None
    source: ModelSource
    train_dataset: Any  # datasets.Dataset
    held_out: list[dict]


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
    eval_samples: int
    pass_at_k_before: float | None
    pass_at_k_after: float | None
    mean_at_k_before: float | None
    mean_at_k_after: float | None
    wall_seconds: float
    interrupted: bool
    final_metrics: dict[str, float]
    examples_after: list
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prepare_data(settings: RunSettings, seed: int) -> tuple[Any, list[dict]]:
    """(train_dataset, held_out_problems); the arithmetic task unless ``settings.dataset`` is set.

    The held-out split is drawn with ``settings.held_out_seed``, or with ``seed`` when that is None.
    """
    from datasets import Dataset

    if settings.held_out_seed is not None:
        seed = settings.held_out_seed
    if settings.dataset is None:
        from bandpo.training.arithmetic import ArithmeticTask

        train, held_out = ArithmeticTask().split(settings.eval_problems, seed)
        return Dataset.from_list(train), held_out
    from bandpo.training.data import DatasetSpec, load_prompt_dataset

    spec = DatasetSpec(settings.dataset, settings.split, settings.prompt_column, settings.answer_column)
    dataset = load_prompt_dataset(spec)
    if len(dataset) < 2:
        raise ValueError(f"--dataset {settings.dataset} has {len(dataset)} row(s): it needs held-out rows and training rows")
    if not settings.eval_problems < len(dataset):
        raise ValueError(
            f"--eval-problems must be in 1..{len(dataset) - 1} for {settings.dataset} ({len(dataset)} rows), "
            f"got {settings.eval_problems}"
        )
    parts = dataset.train_test_split(test_size=settings.eval_problems, seed=seed)
    return parts["train"], parts["test"].to_list()


def last_checkpoint(output_dir: Path) -> str:
    """The newest checkpoint folder in ``output_dir`` (ValueError when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if found is None:
        raise ValueError(f"--resume: no checkpoint-* folder in {output_dir}")
    return found


def prepare_run(settings: RunSettings) -> PreparedRun:
    """Every check that needs no model: trainer config, engines, output folder, checkpoint, model
    path, dataset and its columns. ValueError names what is wrong."""
    config = BandPOConfig(**settings.trainer_fields)
    check_engines(config)
    check_output_dir(settings.output_dir)
    resume_from = last_checkpoint(settings.output_dir) if settings.resume else None
    source = resolve_model(settings.model)
    train_dataset, held_out = prepare_data(settings, config.seed)
    return PreparedRun(settings, config, resume_from, source, train_dataset, held_out)


def read_metrics(path: Path) -> list[dict]:
    """The JSONL metric records of a run."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def keep_metrics_up_to(path: Path, step: int) -> None:
    """Drop the records after ``step``: a run killed after its last checkpoint logged steps that
    resuming from that checkpoint logs again."""
    kept = [record for record in read_metrics(path) if record.get("step", 0) <= step]
    path.write_text("".join(json.dumps(record) + "\n" for record in kept))


def checkpoint_step(checkpoint: str) -> int:
    """The global step a checkpoint folder was saved at (from its trainer_state.json)."""
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]


def final_training_metrics(records: list[dict]) -> dict[str, float]:
    """Mean of the last quarter of the run's per-step records, for the summary."""
    from bandpo.training.statistics import STEP_METRICS, last_quarter_mean

    means = {metric: last_quarter_mean(records, metric) for metric in STEP_METRICS}
    return {metric: value for metric, value in means.items() if value is not None}


def evaluate_held_out(model, tokenizer, prepared: PreparedRun) -> EvalResult:
    """The run's held-out evaluation of ``model`` (greedy, and pass@k when the settings ask)."""
    return evaluate(
        model, tokenizer, prepared.held_out, prepared.config.max_completion_length,
        samples=prepared.settings.eval_samples, seed=EVAL_SAMPLING_SEED,
    )


def evaluate_base_model(prepared: PreparedRun) -> EvalResult:
    """The held-out evaluation of the untrained model (loads it)."""
    from bandpo.training.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(prepared.source)
    return evaluate_held_out(model, tokenizer, prepared)


def describe_evaluation(label: str, result: EvalResult) -> str:
    """One line: greedy accuracy, and pass@k / mean@k when sampled."""
    line = f"{label}: accuracy {result.accuracy:.1%} on {result.count} held-out problems"
    if result.samples:
        line += f", pass@{result.samples} {result.pass_at_k:.1%}, mean@{result.samples} {result.mean_at_k:.1%}"
    return line


def execute_run(prepared: PreparedRun, quiet: bool = False, before: EvalResult | None = None) -> RunResult:
    """Load, evaluate, train, evaluate; writes metrics.jsonl, training.png and summary.json.

    ``before``: the base model's held-out evaluation when the caller already has it (``bandpo
    compare`` evaluates the base model once for all its runs); evaluated here when None.
    """
    from transformers import PrinterCallback

    from bandpo.integrations.trl import BandPOTrainer
    from bandpo.training.arithmetic import correctness_reward
    from bandpo.training.callbacks import CompactProgressCallback, GracefulInterruptCallback, JsonlMetricsCallback
    from bandpo.training.models import load_model_and_tokenizer
    from bandpo.training.plots import plot_training

    start = time.perf_counter()
    settings, config = prepared.settings, prepared.config
    model, tokenizer = load_model_and_tokenizer(prepared.source)
    if before is None:
        before = evaluate_held_out(model, tokenizer, prepared)
    if not quiet:
        print(describe_evaluation("before", before), flush=True)
    metrics_path = settings.output_dir / "metrics.jsonl"
    if prepared.resume_from is not None:
        keep_metrics_up_to(metrics_path, checkpoint_step(prepared.resume_from))
    elif metrics_path.exists():
        metrics_path.unlink()
    interrupt = GracefulInterruptCallback()
    trainer = BandPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=correctness_reward,
        args=config,
        train_dataset=prepared.train_dataset,
        callbacks=[JsonlMetricsCallback(metrics_path), interrupt] + ([] if quiet else [CompactProgressCallback()]),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=prepared.resume_from)
    after = None if interrupt.interrupted else evaluate_held_out(model, tokenizer, prepared)
    records = read_metrics(metrics_path)
    if records:
        plot_training(records, settings.output_dir / "training.png", f"{settings.model} {config.bandpo_clip_method}")
    result = RunResult(
        output_dir=str(settings.output_dir),
        method=config.bandpo_clip_method,
        seed=config.seed,
        steps=trainer.state.global_step,
        accuracy_before=before.accuracy,
        accuracy_after=None if after is None else after.accuracy,
        eval_count=before.count,
        eval_samples=settings.eval_samples,
        pass_at_k_before=before.pass_at_k,
        pass_at_k_after=None if after is None else after.pass_at_k,
        mean_at_k_before=before.mean_at_k,
        mean_at_k_after=None if after is None else after.mean_at_k,
        wall_seconds=time.perf_counter() - start,
        interrupted=interrupt.interrupted,
        final_metrics=final_training_metrics(records),
        examples_after=[] if after is None else after.examples,
        settings=settings.fingerprint(),
    )
    (settings.output_dir / "summary.json").write_text(json.dumps(result.to_json(), indent=2))
    return result
