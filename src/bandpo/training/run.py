"""One training run: validate everything (`prepare_run`), then load -> evaluate -> train ->
evaluate -> plot -> write (`execute_run`). ``bandpo train`` runs one; ``bandpo compare`` many.

A run's folder holds ``metrics.jsonl`` (one JSON record per log step), ``training.png``,
``summary.json`` (`RunResult`), TensorBoard events under ``runs/``, the checkpoints and the lock of
the process writing there (`bandpo.training.files`). Every file read back is written atomically; a
summary records paths relative to the run's folder, so that a committed run names no machine path.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from bandpo.integrations.trl import BandPOConfig
from bandpo.training.evaluate import EvalResult, evaluate
from bandpo.training.files import lock_folder, read_json, read_jsonl, write_json_atomic
from bandpo.training.interrupts import Interrupted
from bandpo.training.models import ModelSource, resolve_model
from bandpo.training.settings import RunSettings, check_engines, check_output_dir

EVAL_SAMPLING_SEED = 0
"""Seed of the pass@k samples: the same before and after training, and for every run."""
RUN_FOLDER = "."
"""``output_dir`` as a summary records it: relative to the run's folder, i.e. the folder itself."""
CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")
END_OF_TRAINING_KEY = "train_runtime"
"""The key of the record Trainer logs once, when training ends (not a step record)."""


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
    """What a finished (or interrupted) run measured; ``output_dir`` is `RUN_FOLDER`."""

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


def check_enough_prompts(train_rows: int, config: BandPOConfig, source: str) -> None:
    """ValueError unless the training rows fill one generation: TRL draws
    generation_batch_size / num_generations prompts per generation and drops an incomplete draw, so
    fewer rows than that train 0 steps."""
    needed = config.generation_batch_size // config.num_generations
    if train_rows < needed:
        raise ValueError(
            f"{source} leaves {train_rows} training row(s), but one generation draws {needed} prompts "
            f"(per_device_train_batch_size {config.per_device_train_batch_size} x steps_per_generation "
            f"{config.steps_per_generation} / num_generations {config.num_generations}), so no step would train; "
            "use more rows, a smaller --eval-problems or a smaller batch"
        )


def prepare_data(settings: RunSettings, config: BandPOConfig) -> tuple[Any, list[dict]]:
    """(train_dataset, held_out_problems); the arithmetic task unless ``settings.dataset`` is set.

    The held-out split is drawn with ``settings.held_out_seed``, or with ``config.seed`` when that is
    None. ValueError if the training rows cannot fill one generation (`check_enough_prompts`).
    """
    from datasets import Dataset

    seed = config.seed if settings.held_out_seed is None else settings.held_out_seed
    if settings.dataset is None:
        from bandpo.training.arithmetic import ArithmeticTask

        train, held_out = ArithmeticTask().split(settings.eval_problems, seed)
        check_enough_prompts(len(train), config, "the arithmetic task")
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
    check_enough_prompts(len(parts["train"]), config, f"--dataset {settings.dataset} with --eval-problems "
                         f"{settings.eval_problems}")
    return parts["train"], parts["test"].to_list()


def checkpoint_step(checkpoint: Path) -> int | None:
    """The step a checkpoint folder was completely saved at; None if it is incomplete.

    Trainer writes ``trainer_state.json`` last, so a checkpoint whose state parses and names the
    folder's own step was written whole; one cut short (kill, full disk) is never chosen.
    """
    match = CHECKPOINT_FOLDER.match(checkpoint.name)
    if match is None:
        return None
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    step = int(match[1])
    complete = isinstance(state, dict) and state.get("global_step") == step
    return step if complete else None


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``output_dir``, complete or not."""
    if not output_dir.is_dir():
        return []
    return [path for path in output_dir.iterdir() if path.is_dir() and CHECKPOINT_FOLDER.match(path.name)]


def last_checkpoint(output_dir: Path) -> Path:
    """The newest complete checkpoint in ``output_dir`` (`checkpoint_step`); ValueError when there is none."""
    complete = [(step, path) for path in checkpoint_folders(output_dir) if (step := checkpoint_step(path)) is not None]
    if not complete:
        found = sorted(path.name for path in checkpoint_folders(output_dir))
        raise ValueError(
            f"--resume: no complete checkpoint-* folder in {output_dir}"
            + (f" ({', '.join(found)} cut short: no readable trainer_state.json)" if found else "")
        )
    return max(complete)[1]


def read_summary(output_dir: Path) -> dict | None:
    """The run's summary.json (None if there is none); CorruptFileError names it and what to do."""
    path = output_dir / "summary.json"
    if not path.is_file():
        return None
    return read_json(path, f"delete {path} to train the run again")


def is_finished(summary: dict | None) -> TypeGuard[dict]:
    """Whether a summary records a run that trained and evaluated to the end."""
    return summary is not None and not summary.get("interrupted") and summary.get("accuracy_after") is not None


def check_fresh_folder(output_dir: Path) -> None:
    """ValueError if ``output_dir`` holds a finished run or checkpoints: a new run there would replace
    them silently (``bandpo train`` asks for --resume or --overwrite)."""
    what = "a finished run (summary.json)" if is_finished(read_summary(output_dir)) else None
    if what is None and checkpoint_folders(output_dir):
        what = "checkpoints of an unfinished run"
    if what is not None:
        raise ValueError(
            f"--output-dir {output_dir} holds {what}; continue it with --resume, replace it with --overwrite, "
            "or choose another --output-dir"
        )


def prepare_run(settings: RunSettings, refuse_existing: bool = True) -> PreparedRun:
    """Every check that needs no model: trainer config, engines, output folder (locked for this
    process, `bandpo.training.files.lock_folder`), checkpoint and metrics to resume, model path,
    dataset and its columns. ValueError names what is wrong.

    ``refuse_existing``: unless resuming or overwriting, refuse a folder that holds a run
    (`check_fresh_folder`); ``bandpo compare`` reuses or re-does its runs itself.
    """
    config = BandPOConfig(**settings.trainer_fields)
    check_engines(config)
    check_output_dir(settings.output_dir)
    lock_folder(settings.output_dir)
    resume_from = None
    if settings.resume:
        resume_from = str(last_checkpoint(settings.output_dir))
        read_metrics(settings.output_dir / "metrics.jsonl")
    elif refuse_existing and not settings.overwrite:
        check_fresh_folder(settings.output_dir)
    source = resolve_model(settings.model)
    train_dataset, held_out = prepare_data(settings, config)
    return PreparedRun(settings, config, resume_from, source, train_dataset, held_out)


def read_metrics(path: Path) -> list[dict]:
    """The JSONL metric records of a run; CorruptFileError names the file and line, and what to do."""
    return read_jsonl(path, f"delete the run's folder {path.parent} to train it again")


def metrics_to_resume(path: Path, step: int) -> list[dict]:
    """The records a resume from the checkpoint of ``step`` keeps: those up to ``step``, without the
    end-of-training record of the stopped attempt (a run killed after its last checkpoint logged steps
    that resuming logs again)."""
    return [r for r in read_metrics(path) if r.get("step", 0) <= step and END_OF_TRAINING_KEY not in r]


def start_afresh(output_dir: Path) -> None:
    """Remove what an earlier attempt left in a run's folder: metrics, summary, plot and checkpoints."""
    for name in ("metrics.jsonl", "summary.json", "training.png"):
        (output_dir / name).unlink(missing_ok=True)
    for checkpoint in checkpoint_folders(output_dir):
        shutil.rmtree(checkpoint)


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
        resume_step = checkpoint_step(Path(prepared.resume_from))
        if resume_step is None:  # it was complete when the run was prepared
            raise ValueError(f"--resume: {prepared.resume_from} is no longer a complete checkpoint")
        kept = metrics_to_resume(metrics_path, resume_step)
        (settings.output_dir / "summary.json").unlink(missing_ok=True)
    else:
        kept = []
        start_afresh(settings.output_dir)
    interrupt = GracefulInterruptCallback()
    trainer = BandPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=correctness_reward,
        args=config,
        train_dataset=prepared.train_dataset,
        callbacks=[JsonlMetricsCallback(metrics_path, kept), interrupt] + ([] if quiet else [CompactProgressCallback()]),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=prepared.resume_from)
    after = None if interrupt.interrupted else evaluate_held_out(model, tokenizer, prepared)
    records = read_metrics(metrics_path)
    if records:
        plot_training(records, settings.output_dir / "training.png", f"{settings.model} {config.bandpo_clip_method}")
    result = RunResult(
        output_dir=RUN_FOLDER,
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
    write_json_atomic(settings.output_dir / "summary.json", result.to_json())
    if interrupt.signum is not None:  # interrupt.interrupted
        raise Interrupted(interrupt.signum)
    return result


def relative_summary_paths(folder: Path) -> list[Path]:
    """Rewrite every ``*/summary.json`` under ``folder`` that records a machine path as ``output_dir``
    to record `RUN_FOLDER` instead (atomically); returns the summaries rewritten.

    Migration of summaries written before paths were relative; the fingerprint (``settings``) is left
    as it is, so the runs are still reused.
    """
    rewritten = []
    for path in sorted(Path(folder).glob("*/summary.json")):
        summary = read_json(path, "repair or delete it before migrating")
        if summary.get("output_dir") != RUN_FOLDER:
            write_json_atomic(path, {**summary, "output_dir": RUN_FOLDER})
            rewritten.append(path)
    return rewritten
