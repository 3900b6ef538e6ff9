"""Statistics of a comparison of clipping rules over seeds: per-run rows, per-method mean +- sd, and
paired per-seed differences with a Student-t interval.

A run's per-step records are the JSON lines of its ``metrics.jsonl``. With ``G`` =
gradient_accumulation_steps and each generation used for ``E`` = steps_per_generation x
num_iterations micro-batches, optimizer step ``s`` (1-based) holds micro-batches
``m = (s - 1) G .. s G - 1``; micro-batch ``m`` is the first on its generation (ratio 1, nothing
can clip) iff ``m mod E == 0``. A step is off-policy when any of its micro-batches is not.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

CLIP_RATE = "clip_ratio/region_mean"
LOW_P_HIGH_SHARE = "clip_ratio/low_p_high_share"
PPO_KL = "policy/ppo_kl"
STEP_METRICS = (CLIP_RATE, LOW_P_HIGH_SHARE, "entropy", "reward")
"""Per-step metrics of the comparison figure (names as TRL / BandPOTrainer log them)."""
OFF_POLICY_FIELDS = {
    "clip_rate_off_policy": CLIP_RATE,
    "low_p_high_share": LOW_P_HIGH_SHARE,
    "ppo_kl_off_policy": PPO_KL,
    "clip_low_rate_off_policy": "clip_ratio/low_mean",
    "clip_high_rate_off_policy": "clip_ratio/high_mean",
    "low_p_pos_log_ratio": "policy/low_p_pos_log_ratio",
    "low_p_neg_log_ratio": "policy/low_p_neg_log_ratio",
}
"""Row fields averaged over a run's off-policy steps, and the logged metric each averages (a run that did
not log a metric, e.g. one recorded before it existed, gets None)."""
MECHANISM_FIELDS = ("ppo_kl_off_policy", "clip_low_rate_off_policy", "clip_high_rate_off_policy",
                    "low_p_pos_log_ratio", "low_p_neg_log_ratio")
"""Row fields that say how a rule moves the policy: how far per update, which side it cuts, how far the
rare tokens rose (A > 0) and fell (A < 0)."""


def compared_fields(samples: int) -> tuple[str, ...]:
    """Row fields summarised per method and differenced per seed (pass@k / mean@k when ``samples`` = k > 0)."""
    sampled = (f"pass_at_{samples}_after", f"mean_at_{samples}_after") if samples else ()
    return ("accuracy_after",) + sampled + ("entropy_last_quarter", "reward_last_quarter", "clip_rate_off_policy",
                                             "low_p_high_share") + MECHANISM_FIELDS


def is_off_policy(step: int, generate_every: int, gradient_accumulation_steps: int = 1) -> bool:
    """Whether optimizer step ``step`` (1-based) updates on samples of an older policy (see module doc)."""
    first = (step - 1) * gradient_accumulation_steps
    return any(micro % generate_every != 0 for micro in range(first, first + gradient_accumulation_steps))


def step_records(records: list[dict]) -> list[dict]:
    """The per-step training records (those carrying the clip rate), in step order."""
    return sorted((r for r in records if CLIP_RATE in r and "step" in r), key=lambda r: r["step"])


def mean_or_none(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def last_quarter_mean(records: list[dict], metric: str) -> float | None:
    """Mean of ``metric`` over the last quarter (at least one) of the per-step records."""
    values = [r[metric] for r in step_records(records) if metric in r]
    return mean_or_none(values[-max(1, len(values) // 4) :])


def run_row(summary: dict, records: list[dict], generate_every: int, gradient_accumulation_steps: int = 1) -> dict:
    """One row of the comparison: the run's evaluations (from ``summary``) and step statistics.

    The `OFF_POLICY_FIELDS` average over the off-policy steps; entropy and reward over the last quarter
    of steps.
    """
    off_policy = [
        r for r in step_records(records) if is_off_policy(r["step"], generate_every, gradient_accumulation_steps)
    ]
    row = {key: summary[key] for key in ("method", "seed", "steps", "accuracy_before", "accuracy_after")}
    samples = summary["eval_samples"]
    if samples:
        for key in ("pass_at", "mean_at"):
            for when in ("before", "after"):
                row[f"{key}_{samples}_{when}"] = summary[f"{key}_k_{when}"]
    row["entropy_last_quarter"] = last_quarter_mean(records, "entropy")
    row["reward_last_quarter"] = last_quarter_mean(records, "reward")
    for field, metric in OFF_POLICY_FIELDS.items():
        row[field] = mean_or_none([r[metric] for r in off_policy if metric in r])
    row["wall_seconds"] = round(summary["wall_seconds"], 1)
    return row


def method_summary(rows: list[dict], fields: tuple[str, ...]) -> dict[str, dict[str, tuple]]:
    """``{method: {field: (mean, sd, n)}}`` over the method's seeds (sd is the sample sd; 0 for n = 1)."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    summary: dict[str, dict[str, tuple]] = {}
    for method, method_rows in by_method.items():
        summary[method] = {}
        for name in fields:
            values = [row[name] for row in method_rows if row.get(name) is not None]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                summary[method][name] = (statistics.fmean(values), sd, len(values))
    return summary


def t_interval(differences: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval mean +- t_{n-1} sd / sqrt(n); (mean, nan, nan) for n < 2."""
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, math.nan, math.nan
    from scipy.stats import t

    half = t.ppf(0.5 + confidence / 2, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return mean, mean - half, mean + half


def paired_differences(rows: list[dict], field: str, method: str, baseline: str) -> dict | None:
    """``method - baseline`` of ``field`` per shared seed, with the 95% t interval of the mean.

    None when the two methods share no seed with both values.
    """
    values: dict[tuple[str, Any], Any] = {(row["method"], row["seed"]): row.get(field) for row in rows}
    seeds = sorted(
        seed for (name, seed) in values
        if name == method and values[(name, seed)] is not None and values.get((baseline, seed)) is not None
    )
    if not seeds:
        return None
    per_seed = [values[(method, seed)] - values[(baseline, seed)] for seed in seeds]
    mean, low, high = t_interval(per_seed)
    return {"field": field, "method": method, "baseline": baseline, "seeds": seeds, "per_seed": per_seed,
            "mean": mean, "ci95": [low, high]}


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_runs_table(rows: list[dict], samples: int) -> str:
    """Markdown: one line per run."""
    sampled = (f"pass_at_{samples}_before", f"pass_at_{samples}_after") if samples else ()
    columns = ("method", "seed", "steps", "accuracy_before", "accuracy_after") + sampled + (
        "entropy_last_quarter", "clip_rate_off_policy", "low_p_high_share", "reward_last_quarter", "wall_seconds")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(row[name]) if isinstance(row[name], (str, int)) else _number(row[name]) for name in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_method_table(summary: dict[str, dict[str, tuple]], fields: tuple[str, ...]) -> str:
    """Markdown: mean +- sd (n seeds) per method."""
    lines = ["| method | " + " | ".join(fields) + " |", "|---|" + "---|" * len(fields)]
    for method, stats in summary.items():
        cells = [f"{_number(stats[name][0])} ± {_number(stats[name][1])} (n={stats[name][2]})" if name in stats else "-"
                 for name in fields]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_differences_table(differences: list[dict]) -> str:
    """Markdown: paired differences per seed with the mean and its 95% t interval."""
    lines = ["| difference | field | per seed | mean | 95% t interval |", "|---|---|---|---|---|"]
    for diff in differences:
        per_seed = ", ".join(f"s{seed}: {value:+.3f}" for seed, value in zip(diff["seeds"], diff["per_seed"], strict=True))
        low, high = diff["ci95"]
        interval = "-" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"
        lines.append(f"| {diff['method']} − {diff['baseline']} | {diff['field']} | {per_seed} | {diff['mean']:+.3f} | {interval} |")
    return "\n".join(lines)


FIELD_FORMATS: dict[str, tuple[str, float, int]] = {
    "accuracy_after": ("greedy accuracy (%)", 100.0, 1),
    "pass_at_8_after": ("pass@8 (%)", 100.0, 1),
    "mean_at_8_after": ("mean@8 (%)", 100.0, 1),
    "entropy_last_quarter": ("entropy, last quarter (nats)", 1.0, 2),
    "reward_last_quarter": ("reward, last quarter", 1.0, 2),
    "clip_rate_off_policy": ("clip rate (%)", 100.0, 1),
    "low_p_high_share": ("low-p clip-high share", 1.0, 3),
    "ppo_kl_off_policy": ("ppo_kl per update", 1.0, 4),
    "clip_low_rate_off_policy": ("cut below (%)", 100.0, 2),
    "clip_high_rate_off_policy": ("cut above (%)", 100.0, 2),
    "low_p_pos_log_ratio": ("low-p log r, A > 0", 1.0, 3),
    "low_p_neg_log_ratio": ("low-p log r, A < 0", 1.0, 3),
}
"""How the docs show a row field: (column label, scale, decimals); percentages are shown as points."""


def format_field(field: str, value: float, sign: bool = False) -> str:
    """``value`` of row field ``field`` in its display units and decimals (`FIELD_FORMATS`)."""
    _, scale, digits = FIELD_FORMATS[field]
    return f"{value * scale:{'+' if sign else ''}.{digits}f}"


def format_summary_columns(per_method: dict[str, dict[str, dict]], methods: list[str], fields: list[str]) -> str:
    """Markdown from statistics.json's ``per_method``: one row per method, ``mean ± sd`` per field over
    its seeds; a cell over fewer seeds than the table's most says how many (n=...)."""
    most = max((stats[f]["n"] for stats in per_method.values() for f in fields if f in stats), default=0)
    lines = ["| method | " + " | ".join(FIELD_FORMATS[field][0] for field in fields) + " |",
             "|---|" + "---|" * len(fields)]
    for method in methods:
        stats = per_method.get(method, {})
        cells = [f"{format_field(f, stats[f]['mean'])} ± {format_field(f, stats[f]['sd'])}" + (
            f" (n={stats[f]['n']})" if stats[f]["n"] != most else "") if f in stats else "–" for f in fields]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_paired_columns(differences: list[dict], pairs: list[tuple[str, str]], fields: list[str]) -> str:
    """Markdown from statistics.json's ``paired_differences``: one row per (method, baseline) pair,
    ``mean [95% interval]`` per field, in the fields' display units."""
    found = {(d["method"], d["baseline"], d["field"]): d for d in differences}
    lines = ["| paired difference (seeds) | " + " | ".join(FIELD_FORMATS[field][0] for field in fields) + " |",
             "|---|" + "---|" * len(fields)]
    for method, baseline in pairs:
        cells, seeds = [], set()
        for field in fields:
            diff = found.get((method, baseline, field))
            if diff is None:
                cells.append("–")
                continue
            seeds.update(diff["seeds"])
            low, high = diff["ci95"]
            interval = "" if math.isnan(low) else f" [{format_field(field, low, True)}, {format_field(field, high, True)}]"
            cells.append(format_field(field, diff["mean"], True) + interval)
        label = f"{method} − {baseline} ({len(seeds)})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
