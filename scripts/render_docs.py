"""Renders the documentation's numbers and figures from the results files they come from.

Every figure in the docs that comes from a results file (``benchmarks/results/**``, ``docs/study/``,
``docs/compare-fast/``) is written by a function of this module into ``docs/generated/`` (ignored by
git), and the pages include it with the include-markdown plugin::

    {% include-markdown "generated/operator-speed.md" %}      (from a page in docs/)
    ![...](generated/some-figure.png)                         (a figure)

It runs as an mkdocs hook (``hooks:`` in mkdocs.yml: before every build, and ``mkdocs serve``
re-renders when a results file changes) and as a script, ``python scripts/render_docs.py [--out DIR]``.

**Adding an artifact** is one function and one line: a function of the repository root that
returns the Markdown (``str``) or the image (``bytes``, see `figure_png`), decorated with
``@artifact("file-name.md")``; then include ``generated/file-name.md`` from a page.
``tests/test_docs.py`` checks that every artifact renders, is included by a page, follows its file,
and that no page repeats one of its numbers by hand.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GENERATED = "generated"
"""Folder under docs/ that the artifacts are written to (gitignored, excluded from the nav)."""
RESULT_FOLDERS = ("benchmarks/results", "docs/study", "docs/study-rerun", "docs/compare-fast")
"""What the artifacts read; ``mkdocs serve`` watches them."""

Render = Callable[[Path], str | bytes]
ARTIFACTS: dict[str, Render] = {}
"""File name under docs/generated/ -> the function rendering it from the repository root."""


def artifact(name: str) -> Callable[[Render], Render]:
    """Registers ``render(root)`` as the producer of ``docs/generated/<name>``."""
    if name in ARTIFACTS or "/" in name:
        raise ValueError(f"artifact name {name!r} must be a new plain file name; taken: {sorted(ARTIFACTS)}")

    def register(render: Render) -> Render:
        ARTIFACTS[name] = render
        return render

    return register


def figure_png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes without a timestamp or version, so an unchanged figure is
    byte-identical and not rewritten."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def render_all(out_dir: Path, root: Path = ROOT) -> list[Path]:
    """Writes every artifact into ``out_dir`` (only those whose content changed, so ``mkdocs serve``
    does not loop) and removes files no artifact produces. Returns the artifacts' paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, render in ARTIFACTS.items():
        content = render(root)
        data = content.encode() if isinstance(content, str) else content
        path = out_dir / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        paths.append(path)
    for stale in set(out_dir.iterdir()) - set(paths):
        stale.unlink()
    return paths


# ---------------------------------------------------------------- mkdocs hook


def on_pre_build(config: Any) -> None:
    """Renders the artifacts before mkdocs collects the pages."""
    render_all(Path(config["docs_dir"]) / GENERATED)


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """``mkdocs serve`` rebuilds (and so re-renders) when a results file or this module changes."""
    for folder in RESULT_FOLDERS:
        if (ROOT / folder).exists():
            server.watch(str(ROOT / folder))
    server.watch(__file__)
    return server


# ---------------------------------------------------------------- results files


@dataclass(frozen=True)
class SpeedRow:
    """One line of ``benchmarks/band_speed.py``'s table, in the file's own digits."""

    ms: str
    x_exp_clamp: str
    speedup_vs_bisection: str
    max_rel_err: str


SPEED_LINE = re.compile(
    r"^\s*(?P<n>\d+)\s+(?P<method>\S.*?)\s{2,}(?P<ms>[\d.]+)\s+[\d.]+\s+(?P<x_exp>[\d.]+)\s+"
    r"(?P<speedup>[\d.]+)\s+(?P<err>\S+)"
)


def read_band_speed(path: Path) -> dict[tuple[int, str], SpeedRow]:
    """``{(tokens, method): row}`` of a band_speed.txt; other lines (comments, torch's warnings) are skipped.
    Methods read as in the file: ``"exp+clamp (clip)"``, ``"kl bisection (published)"``, ``"kl (native)"``."""
    rows = {}
    for line in path.read_text().splitlines():
        if match := SPEED_LINE.match(line):
            rows[int(match["n"]), match["method"]] = SpeedRow(
                match["ms"], match["x_exp"], match["speedup"], match["err"])
    if not rows:
        raise ValueError(f"{path}: no benchmark rows found")
    return rows


@dataclass(frozen=True)
class LossOverhead:
    """``benchmarks/loss_overhead.py``'s result: median milliseconds per rule and their ratio."""

    band_ms: str
    fixed_ms: str
    ratio: str


def read_loss_overhead(path: Path) -> LossOverhead:
    """The medians of Band(kl) and FixedClip and the ratio line of a loss_overhead.txt."""
    text = path.read_text()
    medians = dict(re.findall(r"^\s*(Band\(kl\)|FixedClip)\s+median\s+([\d.]+) ms", text, re.MULTILINE))
    ratio = re.search(r"ratio Band / FixedClip \(medians\): ([\d.]+)x", text)
    if ratio is None or set(medians) != {"Band(kl)", "FixedClip"}:
        raise ValueError(f"{path}: expected the Band(kl) and FixedClip medians and their ratio")
    return LossOverhead(medians["Band(kl)"], medians["FixedClip"], ratio[1])


@dataclass(frozen=True)
class TrainOverhead:
    """``benchmarks/train_overhead.py``'s result."""

    band_step_s: str
    fixed_step_s: str
    step_ratio: str
    bounds_ms: str
    bounds_share: str


def read_train_overhead(path: Path) -> TrainOverhead:
    """Step medians, their ratio and the bounds' own time and share of a train_overhead.txt."""
    text = path.read_text()
    fields = (
        re.search(r"^Band\(.*?step median\s+([\d.]+) s", text, re.MULTILINE),
        re.search(r"^FixedClip\(.*?step median\s+([\d.]+) s", text, re.MULTILINE),
        re.search(r"step ratio Band / FixedClip\s+([\d.]+)", text),
        re.search(r"Band bounds alone on the step's tokens\s+([\d.]+) ms = ([\d.]+)%", text),
    )
    if any(match is None for match in fields):
        raise ValueError(f"{path}: expected both step medians, their ratio and the bounds' share")
    band, fixed, ratio, bounds = fields
    return TrainOverhead(band[1], fixed[1], ratio[1], bounds[1], bounds[2])


def read_band_accuracy(path: Path) -> dict[str, Any]:
    """Worst relative error per dtype of a band_accuracy.txt, with the divergences and radii covered."""
    worst: dict[str, float] = {}
    divergences, deltas = [], []
    for line in path.read_text().splitlines()[1:]:
        divergence, delta, dtype, _kernel, error, _target, verdict = line.split()
        if verdict != "ok":
            raise ValueError(f"{path}: a row misses its target: {line!r}")
        worst[dtype] = max(worst.get(dtype, 0.0), float(error))
        divergences += [divergence] if divergence not in divergences else []
        deltas += [float(delta)] if float(delta) not in deltas else []
    return {"worst": worst, "divergences": divergences, "deltas": sorted(deltas)}


def results(root: Path, machine: str, name: str) -> Path:
    """``benchmarks/results/<machine>/<name>``."""
    return root / "benchmarks" / "results" / machine / name


# ---------------------------------------------------------------- artifacts

SPEED_TOKENS = 1_000_000
"""The tokens per call of the operator's speed table (the size the CPU benchmark runs)."""


TARGETS = {
    "band_accuracy": "1e-9 (float64), 2e-5 (float32)",
    "band_speed": "kl >= 50x bisection; tv, chi2 <= 3x exp+clamp; every divergence <= 2x kl",
    "loss_overhead": "<= 1.15x",
    "train_overhead": "< 2%",
}
"""What each benchmark must reach: specifications, written by hand (the pages may repeat them)."""


def _kernels(rows: dict[tuple[int, str], SpeedRow], tokens: int, divergence: str) -> list[str]:
    """The kernels measured for ``divergence`` at ``tokens``, in the file's order."""
    prefix = f"{divergence} ("
    return [method[len(prefix):-1] for n, method in rows if n == tokens and method.startswith(prefix)]


def _times_kl(rows: dict[tuple[int, str], SpeedRow], tokens: int, method: str) -> float:
    """Time of ``method`` (``"tv (fused)"``) over kl's on the same kernel."""
    kernel = method.split(" ", 1)[1]
    return float(rows[tokens, method].ms) / float(rows[tokens, f"kl {kernel}"].ms)


def _speed_cells(rows: dict[tuple[int, str], SpeedRow], tokens: int, divergence: str) -> tuple[str, str]:
    """(ms per kernel, comparison per kernel) of one divergence: kl against the bisection, tv and
    chi2 against exp+clamp (their targets), the others against kl on the same kernel."""
    kernels = _kernels(rows, tokens, divergence)
    if not kernels:
        return "", ""
    cells = [rows[tokens, f"{divergence} ({kernel})"] for kernel in kernels]
    ms = " / ".join(cell.ms for cell in cells)
    if divergence == "kl":
        versus = " / ".join(f"{cell.speedup_vs_bisection}x" for cell in cells) + " faster"
    elif divergence in ("tv", "chi2"):
        versus = " / ".join(f"{cell.x_exp_clamp}x" for cell in cells) + " exp+clamp"
    else:
        versus = " / ".join(f"{_times_kl(rows, tokens, f'{divergence} ({kernel})'):.2f}x"
                            for kernel in kernels) + " kl's time"
    return ms, versus


@artifact("operator-speed.md")
def operator_speed(root: Path) -> str:
    """The operator page's speed table: CPU and H200 at 1M float32 tokens, per divergence and kernel."""
    machines = [read_band_speed(results(root, machine, "band_speed.txt")) for machine in ("cpu", "h200")]
    lines = [
        "| 1M tokens, float32 | CPU, 2 cores | | NVIDIA H200 (earlier code) | |",
        "|---|---|---|---|---|",
        "| | ms | vs bisection / vs exp+clamp | ms | vs bisection / vs exp+clamp |",
    ]
    bisection, clamp = "kl bisection (published)", "exp+clamp (clip)"
    lines.append("| exp + clamp (plain clipping) | " + " | ".join(
        f"{rows[SPEED_TOKENS, clamp].ms} | " for rows in machines) + " |")
    lines.append("| kl, published bisection | " + " | ".join(
        f"{rows[SPEED_TOKENS, bisection].ms} | 1x" for rows in machines) + " |")
    for divergence in ("kl", "tv", "chi2", "reverse_kl", "hellinger"):
        kernels = _kernels(machines[0], SPEED_TOKENS, divergence)
        cells = [" | ".join(_speed_cells(rows, SPEED_TOKENS, divergence)) for rows in machines]
        lines.append(f"| {divergence}, {' / '.join(kernels)} | " + " | ".join(cells) + " |")
    h200 = machines[1]
    largest = max(n for n, _ in h200)
    lines += [
        "",
        f"At {largest / 1e6:.0f}M tokens on the H200, fused tv and chi2 cost "
        f"{h200[largest, 'tv (fused)'].x_exp_clamp}x and {h200[largest, 'chi2 (fused)'].x_exp_clamp}x an "
        f"exp+clamp pass, and fused kl is {h200[largest, 'kl (fused)'].speedup_vs_bisection}x faster than "
        "bisection. The H200 columns list the kernels measured there (no native kernels on a GPU).",
    ]
    return "\n".join(lines) + "\n"


@artifact("operator-accuracy.md")
def operator_accuracy(root: Path) -> str:
    """Worst error of the bounds per dtype, and the bisection's error, from the CPU results."""
    accuracy = read_band_accuracy(results(root, "cpu", "band_accuracy.txt"))
    bisection = read_band_speed(results(root, "cpu", "band_speed.txt"))[SPEED_TOKENS, "kl bisection (published)"]
    worst, deltas = accuracy["worst"], accuracy["deltas"]
    return (
        f"Worst relative error: {worst['float64']:.2g} for float64 and {worst['float32']:.2g} for float32, "
        f"over {', '.join(accuracy['divergences'])} and {len(deltas)} radii from {deltas[0]:g} to "
        f"{deltas[-1]:g}. The published bisection is off by up to {float(bisection.max_rel_err):.2g} "
        "relative on float32 inputs.\n"
    )


@artifact("loss-overhead.md")
def loss_overhead(root: Path) -> str:
    """The loss page's overhead of Band over FixedClip, per machine."""
    lines = []
    for machine, label in (("cpu", "This 2-core CPU"), ("h200", "NVIDIA H200 (earlier code)")):
        result = read_loss_overhead(results(root, machine, "loss_overhead.txt"))
        lines.append(f"- {label}: **{result.ratio}x** (medians {result.band_ms} ms vs {result.fixed_ms} ms; "
                     f"`benchmarks/results/{machine}/loss_overhead.txt`)")
    return "\n".join(lines) + "\n"


@artifact("train-overhead.md")
def train_overhead(root: Path) -> str:
    """The bounds' share of a training step of the default run."""
    result = read_train_overhead(results(root, "cpu", "train_overhead.txt"))
    return (
        f"{result.bounds_ms} ms of Band per {float(result.fixed_step_s):.1f} s forward + loss + backward, "
        f"**{result.bounds_share}%** of the step (target {TARGETS['train_overhead']}); the two whole-step medians (Band "
        f"{result.band_step_s} s, FixedClip {result.fixed_step_s} s, ratio {result.step_ratio}) differ by noise.\n"
    )


@artifact("default-run.md")
def default_run(root: Path) -> str:
    """What the default ``bandpo train`` run reached, from the summary it wrote."""
    summary = json.loads(results(root, "cpu", "default_run_summary.json").read_text())
    before, after = summary["accuracy_before"], summary["accuracy_after"]
    final = summary["final_metrics"]
    lines = [
        f"- **Result** (`benchmarks/results/cpu/default_run_summary.json`): greedy accuracy on "
        f"{summary['eval_count']} held-out problems {before:.1%} -> {after:.1%} "
        f"({100 * (after - before):+.1f} points) in {summary['steps']} steps and "
        f"{summary['wall_seconds'] / 60:.1f} min; over the last quarter of training, reward "
        f"{final['reward']:.2f} and entropy {final['entropy']:.2f}. After training the model answers:",
    ]
    lines += [f"    - {prompt!r} -> {completion!r} (answer {answer})"
              for prompt, completion, answer in summary["examples_after"]]
    return "\n".join(lines) + "\n"


@artifact("benchmarks-summary.md")
def benchmarks_summary(root: Path) -> str:
    """The benchmarks page's table: each script, its target and its current result."""
    accuracy = read_band_accuracy(results(root, "cpu", "band_accuracy.txt"))["worst"]
    speed = read_band_speed(results(root, "cpu", "band_speed.txt"))
    by_kl = {method: _times_kl(speed, SPEED_TOKENS, method) for n, method in speed
             if n == SPEED_TOKENS and method.split(" ")[0] not in ("kl", "exp+clamp")}
    slowest = max(by_kl, key=by_kl.__getitem__)
    cpu_loss, h200_loss = (read_loss_overhead(results(root, machine, "loss_overhead.txt")) for machine in ("cpu", "h200"))
    train = read_train_overhead(results(root, "cpu", "train_overhead.txt"))
    native = {divergence: speed[SPEED_TOKENS, f"{divergence} (native)"] for divergence in ("kl", "tv", "chi2")}
    rows = [
        ("`benchmarks/band_accuracy.py`", "worst relative error per divergence, delta, dtype and kernel against a "
         "50-digit reference", TARGETS["band_accuracy"],
         f"at most {accuracy['float64']:.2g} / {accuracy['float32']:.2g}"),
        ("`benchmarks/band_speed.py`", "1M float32 tokens per divergence and kernel, against exp+clamp and the "
         "published bisection (`benchmarks/bisection_baseline.py`)",
         TARGETS["band_speed"],
         f"native kl {native['kl'].speedup_vs_bisection}x; native tv {native['tv'].x_exp_clamp}x, chi2 "
         f"{native['chi2'].x_exp_clamp}x; slowest {slowest} {by_kl[slowest]:.2f}x kl"),
        ("`benchmarks/loss_overhead.py`", "forward + backward of `policy_loss` on 64 x 4096 tokens, `Band(\"kl\")` "
         "against `FixedClip`", TARGETS["loss_overhead"], f"{cpu_loss.ratio}x (CPU), {h200_loss.ratio}x (H200, earlier code)"),
        ("`benchmarks/train_overhead.py`", "the bounds' share of a training step of the default run", TARGETS["train_overhead"],
         f"{train.bounds_share}%"),
    ]
    lines = ["| script | measures | target | result |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the study (docs/evidence.md) and the guide to δ

STUDY_METHODS = ["band", "clip", "clip-higher", "dcpo", "band-relax", "band-upper", "band-lower"]
STUDY_OUTCOMES = ["accuracy_after", "pass_at_8_after", "mean_at_8_after", "entropy_last_quarter",
                  "clip_rate_off_policy", "low_p_high_share"]
MECHANISM = ["ppo_kl_off_policy", "clip_low_rate_off_policy", "clip_high_rate_off_policy",
             "low_p_pos_log_ratio", "low_p_neg_log_ratio", "entropy_last_quarter"]
BAND_AGAINST_BASELINES = [("band", "clip-higher"), ("band", "clip"), ("band", "dcpo"), ("band", "band-relax")]
ABLATION = [("band-upper", "clip-higher"), ("band-lower", "clip-higher"), ("band", "band-upper"),
            ("band", "band-lower")]


def study_statistics(root: Path, folder: str = "study") -> dict[str, Any]:
    return json.loads((root / "docs" / folder / "statistics.json").read_text())


@artifact("study-summary.md")
def study_summary(root: Path) -> str:
    """Mean ± sd over seeds of each rule's outcomes (docs/study/statistics.json)."""
    from bandpo.training.statistics import format_summary_columns

    return format_summary_columns(study_statistics(root)["per_method"], STUDY_METHODS, STUDY_OUTCOMES) + "\n"


@artifact("study-differences.md")
def study_differences(root: Path) -> str:
    """Band minus each baseline on the same seed, with 95% t intervals."""
    from bandpo.training.statistics import format_paired_columns

    fields = ["accuracy_after", "pass_at_8_after", "mean_at_8_after", "entropy_last_quarter"]
    return format_paired_columns(study_statistics(root)["paired_differences"], BAND_AGAINST_BASELINES, fields) + "\n"


@artifact("study-ablation.md")
def study_ablation(root: Path) -> str:
    """The sided rules' ablation: each side of the band against clip-higher, and what each side adds."""
    from bandpo.training.statistics import format_paired_columns

    fields = ["entropy_last_quarter", "ppo_kl_off_policy", "accuracy_after", "pass_at_8_after", "mean_at_8_after"]
    return format_paired_columns(study_statistics(root)["paired_differences"], ABLATION, fields) + "\n"


@artifact("study-mechanism.md")
def study_mechanism(root: Path) -> str:
    """How far each rule moves the policy per update, which side it cuts, how far rare tokens move."""
    from bandpo.training.statistics import format_summary_columns

    return format_summary_columns(study_statistics(root)["per_method"], STUDY_METHODS, MECHANISM) + "\n"


@artifact("study-entropy-vs-kl.png")
def study_entropy_against_distance(root: Path) -> bytes:
    """Entropy against cumulative ppo_kl, seed means per rule, from every run's metrics.jsonl."""
    import matplotlib.pyplot as plt

    from bandpo.training.plots import entropy_distance_figure

    runs: dict[str, list[list[dict]]] = {}
    study = root / "docs" / "study"
    for method in STUDY_METHODS:
        for run in sorted(study.glob(f"{method}-seed*")):
            if (run / "summary.json").is_file():
                lines = (run / "metrics.jsonl").read_text().splitlines()
                runs.setdefault(method, []).append([json.loads(line) for line in lines if line.strip()])
    figure = entropy_distance_figure(runs, "Study: entropy against cumulative ppo_kl (seed means)")
    data = figure_png(figure)
    plt.close(figure)
    return data


@artifact("delta-guide.md")
def delta_guide(root: Path) -> str:
    """How far a sampled token's probability may fall and rise at p = 0.01, 0.1, 0.5, 0.9 under each
    rule: clip, clip-higher, and kl / tv / chi2 at δ = 0.01, 0.02, 0.05, 0.1 (cap 10)."""
    from bandpo.room import delta_guide_rows

    probabilities = (0.01, 0.1, 0.5, 0.9)
    lines = ["| rule | " + " | ".join(f"p = {p}: down / up" for p in probabilities) + " |",
             "|---|" + "---|" * len(probabilities)]
    for label, cells in delta_guide_rows(probabilities=probabilities):
        lines.append(f"| {label} | " + " | ".join(f"−{down:.3f} / +{up:.3f}" for down, up in cells) + " |")
    return "\n".join(lines) + "\n"


REPRODUCED_FIELDS = ["accuracy_after", "pass_at_8_after", "mean_at_8_after", "entropy_last_quarter"]


def _step_records(path: Path) -> list[dict]:
    """The per-step training records of a metrics.jsonl (the end-of-training record and timings dropped)."""
    from bandpo.training.statistics import step_records

    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in ("step_time",)} for r in step_records(records)]


def first_difference(original: list[dict], rerun: list[dict]) -> str:
    """Where two runs' per-step records first differ on a metric both logged ("none" if nowhere). The
    mean bounds (``bounds/*``), which the operator's kernel computes to rounding, are reported apart:
    their largest relative difference."""
    first, bounds_gap = "none", 0.0
    for before, after in zip(original, rerun, strict=False):
        shared = sorted(set(before) & set(after))
        for key in shared:
            if key.startswith("bounds/"):
                bounds_gap = max(bounds_gap, abs(before[key] - after[key]) / max(abs(before[key]), 1e-300))
        differing = [key for key in shared if not key.startswith("bounds/") and before[key] != after[key]]
        if differing and first == "none":
            first = f"step {before['step']} ({differing[0]})"
    if first == "none" and len(original) != len(rerun):
        first = f"step count ({len(original)} vs {len(rerun)})"
    return f"{first}; bounds means within {bounds_gap:.1e} relative"


def finished_runs(folder: Path) -> dict[str, tuple[dict, list[dict]]]:
    """``{run folder name: (summary, metrics records)}`` of the finished runs in ``folder``."""
    runs = {}
    for run in sorted(folder.glob("*-seed*")):
        path = run / "summary.json"
        if path.is_file() and json.loads(path.read_text()).get("accuracy_after") is not None:
            lines = (run / "metrics.jsonl").read_text().splitlines()
            runs[run.name] = (json.loads(path.read_text()), [json.loads(line) for line in lines if line.strip()])
    return runs


def run_rows(folder: Path) -> dict[str, dict]:
    """`bandpo.training.statistics.run_row` of each finished run in ``folder``, from its own settings."""
    from bandpo.training.statistics import run_row

    rows = {}
    for name, (summary, records) in finished_runs(folder).items():
        fields = summary["settings"]["trainer_fields"]
        generate_every = fields.get("steps_per_generation", 1) * fields.get("num_iterations", 1)
        rows[name] = run_row(summary, records, generate_every, fields.get("gradient_accumulation_steps", 1))
    return rows


@artifact("study-reproduction.md")
def study_reproduction(root: Path) -> str:
    """Each finished re-run (docs/study-rerun) against its committed run: the outcomes, and the first step
    whose logged metrics differ (bit for bit, on the metrics both logged)."""
    from bandpo.training.statistics import FIELD_FORMATS, format_field

    study, rerun = root / "docs" / "study", root / "docs" / "study-rerun"
    original = run_rows(study)
    labels = [FIELD_FORMATS[field][0] for field in REPRODUCED_FIELDS]
    lines = ["| run | " + " | ".join(f"{label}: committed → re-run" for label in labels) + " | first differing step |",
             "|---|" + "---|" * (len(labels) + 1)]
    for name, row in run_rows(rerun).items():
        before = original[name]
        cells = [f"{format_field(field, before[field])} → {format_field(field, row[field])}" for field in REPRODUCED_FIELDS]
        difference = first_difference(_step_records(study / name / "metrics.jsonl"),
                                      _step_records(rerun / name / "metrics.jsonl"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {difference} |")
    return "\n".join(lines) + "\n"


@artifact("study-rerun-mechanism.md")
def study_rerun_mechanism(root: Path) -> str:
    """The mechanism metrics of each re-run of band and clip-higher (the committed runs predate them)."""
    from bandpo.training.statistics import FIELD_FORMATS, format_field

    lines = ["| re-run | " + " | ".join(FIELD_FORMATS[field][0] for field in MECHANISM) + " |",
             "|---|" + "---|" * len(MECHANISM)]
    for name, row in run_rows(root / "docs" / "study-rerun").items():
        cells = ["–" if row[field] is None else format_field(field, row[field]) for field in MECHANISM]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@artifact("fast-demo.md")
def fast_demo(root: Path) -> str:
    """The fast demo's one row per rule (docs/compare-fast/table.json)."""
    rows = json.loads((root / "docs" / "compare-fast" / "table.json").read_text())
    before = {row["accuracy_before"] for row in rows}
    if len(before) != 1:
        raise ValueError("docs/compare-fast: the runs do not share one held-out evaluation")
    lines = [f"| method | clip rate, off-policy updates | low-p clip-high share | greedy accuracy "
             f"{next(iter(before)):.1%} → | wall |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['clip_rate_off_policy']:.1%} | {row['low_p_high_share']:.3g} | "
                     f"{row['accuracy_after']:.1%} | {row['wall_seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


@artifact("rule-table.md")
def rule_table(root: Path) -> str:
    """The loss page's table of rules, from the one table of rules (`bandpo.rules.CLIP_METHOD_TABLE`)."""
    from bandpo.rules import rule_table_markdown

    return rule_table_markdown() + "\n"


UNTESTED_TRL = {
    "1.15.x": "untested on CPU: its fused LM head needs Triton (without it the first log-probability computation "
              "fails, `_ChunkedLogProbFunction` is None); 1.16 fixed that, and its `_compute_loss` is 1.16's",
}
"""Releases of the supported range that the matrix cannot run here, with the reason (written by hand)."""


@artifact("trl-matrix.md")
def trl_matrix(root: Path) -> str:
    """The compatibility page's TRL matrix: each release's outcome as last recorded by
    ``TRL_MATRIX_RESULTS=benchmarks/results/cpu/trl-matrix.json scripts/test-trl-matrix.sh``; 1.16 is
    .venv's own TRL, tested by the main suite (its row gives the suite's outcome from the suite timing)."""
    matrix = json.loads(results(root, "cpu", "trl-matrix.json").read_text())
    suite = json.loads(results(root, "cpu", "test-suite.json").read_text())
    trl_tests = [case for case in suite["full"]["outcomes_by_module"] if case["module"].startswith("tests/test_trl")]
    rows = [(run["trl"], f"{run['verdict'].lower()}: {run['pytest']} ({run['seconds']} s with the swap)")
            for run in matrix["runs"]]
    rows += list(UNTESTED_TRL.items())
    passed = sum(case["passed"] for case in trl_tests)
    total = sum(case["total"] for case in trl_tests)
    rows.append(("1.16.0", f"{passed} of {total} passed in the main suite (.venv's own TRL; test command of "
                           f"{suite['date']}, commit {suite['commit']})"))
    stack = ", ".join(f"{name} {release}" for name, release in matrix["stack"].items())
    lines = ["| TRL | TRL tests (`tests/test_trl*.py`) |", "|---|---|", *(f"| {trl} | {text} |" for trl, text in rows)]
    lines += ["", f"Matrix last run {matrix['date']} on Python {matrix['python']}, {stack}."]
    return "\n".join(lines) + "\n"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


@artifact("test-suite.md")
def test_suite(root: Path) -> str:
    """The development page's timings of the test command and the fast tier
    (benchmarks/results/cpu/test-suite.json, written by ``benchmarks/suite_time.py``)."""
    suite = json.loads(results(root, "cpu", "test-suite.json").read_text())
    full, fast = suite["full"], suite["fast"]
    load = ", ".join(f"{value:g}" for value in suite["load_average_before"])
    lines = [
        f"Measured {suite['date']} (commit {suite['commit']}, a fresh clone, {suite['cpus']} cores, "
        f"load average before {load}):",
        "",
        "| command | time | tests |",
        "|---|---|---|",
    ]
    for run in (full, fast):
        outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(run["outcomes"].items()))
        lines.append(f"| `{run['command']}` (exit {run['exit_status']}) | {_minutes(run['seconds'])} | {outcomes} |")
    lines += ["", "| phase of `bash scripts/test.sh` | time |", "|---|---|"]
    lines += [f"| {name} | {seconds} s |" for name, seconds in full["phases"].items()]
    lines += ["", f"The fast tier's pytest alone: {fast['phases']['fast-tier']} s. The ten slowest tests "
              f"of the full suite ({len(full['over_60_s'])} over 60 s):", "", "| test | time |", "|---|---|"]
    lines += [f"| `{case['test']}` | {case['seconds']:.1f} s |" for case in full["slowest"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / GENERATED, help="default: docs/generated")
    args = parser.parse_args(argv)
    for path in render_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
