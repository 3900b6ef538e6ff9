"""A comparison of ratio-bound rules over seeds at one budget: plan, train, tabulate, plot.

Every run shares the held-out set (drawn with ``held_out_seed``); for a given seed every method
sees the same training data order. The base model is evaluated once and the result kept in
``baseline.json``. The runs go seed by seed, and a run whose ``summary.json`` exists with the same
settings is reused, so a comparison can be built up over several sittings; a run that did not
finish (interrupted, killed) is trained again from its start. One process at a time writes to the
folder (`bandpo.training.files.lock_folder`); SIGINT / SIGTERM stop the whole comparison, and the
tables are written only when every run has finished, so they never hold an unfinished run. The report gives each
run, each method's mean +- sd over seeds, and per-seed paired differences (band against each
baseline, and the sided rules' ablation) with a 95% t interval (`bandpo.training.statistics`); the figure has the layout of
the paper's Figure 3 (clip rate; low-p clip-high share; entropy) plus the reward.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from bandpo.training import statistics
from bandpo.training.evaluate import EvalResult
from bandpo.training.files import CorruptFileError, lock_folder, read_json, write_json_atomic, write_text_atomic
from bandpo.training.interrupts import Interrupted
from bandpo.training.plots import plot_comparison, plot_entropy_against_distance
from bandpo.training.run import (
    PreparedRun,
    describe_evaluation,
    evaluate_base_model,
    execute_run,
    is_finished,
    prepare_run,
    read_metrics,
    read_summary,
)
from bandpo.training.settings import RunSettings, build_settings

PAIRED_DIFFERENCES = (
    ("band", "clip-higher"),
    ("band", "clip"),
    ("band", "dcpo"),
    ("band", "band-relax"),
    ("band-upper", "clip-higher"),  # the band's upper side alone, against the rule it modifies
    ("band-lower", "clip-higher"),  # the band's lower side alone
    ("band", "band-upper"),  # what the band's lower side adds to its upper side
    ("band", "band-lower"),  # what the band's upper side adds to its lower side
)
"""(method, baseline) pairs differenced seed by seed, when the comparison has both."""


@dataclass(frozen=True)
class ComparisonPlan:
    """The validated runs of a comparison, seed by seed, each with its summary if it finished earlier."""

    runs: list[tuple[PreparedRun, dict | None]]
    seeds: list[int]
    output_dir: Path
    title: str


def finished_summary(settings: RunSettings) -> dict | None:
    """The run's summary.json if it finished with these settings; None if it never finished.

    ValueError if the folder holds a finished run with other settings (it would mix two budgets);
    CorruptFileError (a ValueError) naming the file if its summary or metrics cannot be read.
    """
    summary = read_summary(settings.output_dir)
    if not is_finished(summary):
        return None
    read_metrics(settings.output_dir / "metrics.jsonl")  # read back for the table: refuse a corrupt one now
    if summary.get("settings") != settings.fingerprint():
        raise ValueError(
            f"{settings.output_dir} holds a finished run with other settings; "
            "choose another --output-dir or delete that folder"
        )
    return summary


def plan_comparison(
    preset: str,
    clip_methods: list[str],
    seeds: list[int],
    output_dir: Path,
    model: str = "smollm2",
    config: Path | None = None,
    steps: int | None = None,
    held_out_seed: int = 0,
) -> ComparisonPlan:
    """Every (seed, clip method) run validated, and matched against earlier results, before anything is
    loaded; the run of ``clip_method`` and ``seed`` lives in ``output_dir / f"{clip_method}-seed{seed}"``.

    Takes the lock of ``output_dir`` first: a second process on the same folder is refused here.
    """
    lock_folder(output_dir)
    runs = []
    for seed in seeds:
        for clip_method in clip_methods:
            settings = build_settings(
                preset,
                config,
                run_overrides={"model": model, "held_out_seed": held_out_seed},
                trainer_overrides={"bandpo_clip_method": clip_method, "seed": seed, "max_steps": steps,
                                   "output_dir": str(output_dir / f"{clip_method}-seed{seed}")},
            )
            runs.append((prepare_run(settings, refuse_existing=False), finished_summary(settings)))
    stored_baseline(output_dir)  # read back later: refuse a corrupt one now
    title = f"bandpo compare: {model}, preset {preset}, {len(seeds)} seed(s)"
    return ComparisonPlan(runs, seeds, output_dir, title)


def stored_baseline(output_dir: Path) -> tuple[dict, EvalResult] | None:
    """(key, result) of ``baseline.json``, None if there is none; CorruptFileError names the file."""
    path = output_dir / "baseline.json"
    if not path.is_file():
        return None
    remedy = f"delete {path} to evaluate the base model again"
    stored = read_json(path, remedy)
    try:
        return stored["key"], EvalResult(**stored["result"])
    except (KeyError, TypeError) as error:
        raise CorruptFileError(f"{path} does not hold a base-model evaluation ({error!r}); {remedy}") from error


def base_evaluation(output_dir: Path, prepared: PreparedRun) -> EvalResult:
    """The base model's held-out evaluation, from ``baseline.json`` when it was made for these settings."""
    key = prepared.settings.evaluation_key()  # plain str / int / None values: compares equal after JSON
    stored = stored_baseline(output_dir)
    if stored is not None and stored[0] == key:
        return stored[1]
    print("== base model", flush=True)
    result = evaluate_base_model(prepared)
    print(describe_evaluation("base model", result), flush=True)
    write_json_atomic(output_dir / "baseline.json", {"key": key, "result": dataclasses.asdict(result)})
    return result


def comparison_report(rows: list[dict], samples: int, title: str) -> tuple[str, dict]:
    """(Markdown, JSON-able statistics): per-method mean +- sd and the `PAIRED_DIFFERENCES`."""
    fields = statistics.compared_fields(samples)
    summary = statistics.method_summary(rows, fields)
    differences = [
        difference
        for method, baseline in PAIRED_DIFFERENCES
        for field in fields
        if (difference := statistics.paired_differences(rows, field, method, baseline)) is not None
    ]
    markdown = "\n\n".join([
        f"# {title}",
        "## Per method: mean ± sd over seeds",
        statistics.format_method_table(summary, fields),
        "## Paired differences (method − baseline, same seed), 95% Student-t interval",
        statistics.format_differences_table(differences),
        "## Runs",
        statistics.format_runs_table(rows, samples),
    ])
    per_method = {m: {f: dict(zip(("mean", "sd", "n"), v, strict=True)) for f, v in s.items()} for m, s in summary.items()}
    return markdown + "\n", {"per_method": per_method, "paired_differences": differences}


def train_unfinished_runs(plan: ComparisonPlan) -> list[dict]:
    """The summary of every run of the plan, training those that have none; on `Interrupted`, names
    the runs left unfinished (on stderr) and stops."""
    before = None
    summaries: list[dict] = []
    for prepared, summary in plan.runs:
        config = prepared.config
        try:
            if summary is None:
                if before is None:
                    before = base_evaluation(plan.output_dir, prepared)
                print(f"== {config.bandpo_clip_method} seed {config.seed}", flush=True)
                summary = execute_run(prepared, before=before).to_json()
            else:
                print(f"== {config.bandpo_clip_method} seed {config.seed}: finished earlier, reused", flush=True)
        except Interrupted:
            missing = [run.settings.output_dir.name for run, _ in plan.runs[len(summaries):]]
            print(
                f"bandpo compare: interrupted, no table written; not finished: {', '.join(missing)}. "
                "The same command resumes (finished runs are reused, unfinished ones trained again).",
                file=sys.stderr, flush=True,
            )
            raise
        summaries.append(summary)
    return summaries


def run_comparison(plan: ComparisonPlan) -> tuple[str, Path]:
    """Trains the unfinished runs one after another, then writes ``table.md``, ``table.json``,
    ``statistics.json``, ``compare.png`` and ``entropy-vs-kl.png`` (entropy at equal policy movement),
    the tables atomically and only once every run has finished; returns (the Markdown report, the path
    of compare.png)."""
    rows: list[dict] = []
    curves: dict[str, list[list[dict]]] = {}  # method -> each seed's metric records
    for (prepared, _), summary in zip(plan.runs, train_unfinished_runs(plan), strict=True):
        config = prepared.config
        records = read_metrics(prepared.settings.output_dir / "metrics.jsonl")
        generate_every = config.steps_per_generation * config.num_iterations
        rows.append(statistics.run_row(summary, records, generate_every, config.gradient_accumulation_steps))
        curves.setdefault(config.bandpo_clip_method, []).append(records)
    markdown, report = comparison_report(rows, plan.runs[0][0].settings.eval_samples, plan.title)
    write_text_atomic(plan.output_dir / "table.md", markdown)
    write_json_atomic(plan.output_dir / "table.json", rows)
    write_json_atomic(plan.output_dir / "statistics.json", report)
    plot_entropy_against_distance(curves, plan.output_dir / "entropy-vs-kl.png", plan.title)
    return markdown, plot_comparison(curves, plan.output_dir / "compare.png", plan.title)
