"""PNG plots of a run's training dynamics and of a comparison (the layout of the paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bandpo.training.statistics import PPO_KL, STEP_METRICS  # noqa: E402

PANEL_TITLES = ("(a) clip rate", "(b) low-p (p<0.2) clip-high share", "(c) policy entropy", "reward")
PANELS = tuple(zip(STEP_METRICS, PANEL_TITLES, strict=True))
"""Metric and title of each panel: the paper's Figure 3 (a)-(c), plus the reward."""


def metric_series(records: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``metric`` across log records that have it."""
    points = [(record["step"], record[metric]) for record in records if metric in record and "step" in record]
    if not points:
        return np.array([]), np.array([])
    steps, values = zip(*points, strict=True)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def plot_training(records: list[dict], path: Path, title: str = "") -> Path:
    """2x2 figure of the run's clip rate, low-p clip-high share, entropy and reward against step."""
    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    for axis, (metric, label) in zip(axes.flat, PANELS, strict=True):
        steps, values = metric_series(records, metric)
        axis.plot(steps, values, marker="o", markersize=3)
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def stacked_over_seeds(seed_records: list[list[dict]], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values of shape (seeds, steps)) of ``metric`` over the steps every seed logged; None if none did."""
    series = [metric_series(records, metric) for records in seed_records]
    series = [(steps, values) for steps, values in series if len(steps)]
    if not series:
        return None
    length = min(len(steps) for steps, _ in series)
    return series[0][0][:length], np.stack([values[:length] for _, values in series])


def plot_comparison(runs: dict[str, list[list[dict]]], path: Path, title: str = "") -> Path:
    """1x4 figure, one line per method (mean over seeds, shaded mean +- sd), panels as `PANELS`."""
    figure, axes = plt.subplots(1, 4, figsize=(18, 4))
    for method, seed_records in runs.items():
        for axis, (metric, label) in zip(axes, PANELS, strict=True):
            stacked_series = stacked_over_seeds(seed_records, metric)
            if stacked_series is None:
                continue
            steps, stacked = stacked_series
            mean = stacked.mean(axis=0)
            (line,) = axis.plot(steps, mean, label=f"{method} (n={len(stacked)})")
            if len(stacked) > 1:
                sd = stacked.std(axis=0, ddof=1)
                axis.fill_between(steps, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
            axis.set_title(label)
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def entropy_against_distance(seed_records: list[list[dict]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(cumulative ppo_kl, entropy) at each step, each the mean over seeds.

    The distance is the running sum of the logged `PPO_KL` (each update's estimate of KL(pi_old || pi)
    from the policy that generated its batch; 0 on the first update of a generation): a monotone proxy
    of how far training has moved the policy, the same for every rule. None when the runs did not log
    both metrics."""
    distance = stacked_over_seeds(seed_records, PPO_KL)
    entropy = stacked_over_seeds(seed_records, "entropy")
    if distance is None or entropy is None:
        return None
    length = min(distance[1].shape[1], entropy[1].shape[1])
    return np.cumsum(distance[1][:, :length], axis=1).mean(axis=0), entropy[1][:, :length].mean(axis=0)


def entropy_distance_figure(runs: dict[str, list[list[dict]]], title: str = "") -> plt.Figure:
    """Policy entropy against the cumulative per-update KL, one line per method (seed means at each step):
    whether a rule sharpens more per unit of policy movement, or only moves further."""
    figure, axis = plt.subplots(figsize=(7, 5))
    for method, seed_records in runs.items():
        curve = entropy_against_distance(seed_records)
        if curve is not None:
            axis.plot(*curve, marker="o", markersize=3, label=f"{method} (n={len(seed_records)})")
    axis.set_xlabel("cumulative policy/ppo_kl (sum over updates of mean log pi_old - log pi)")
    axis.set_ylabel("policy entropy (nats)")
    axis.set_title(title or "Entropy at equal distance")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_entropy_against_distance(runs: dict[str, list[list[dict]]], path: Path, title: str = "") -> Path:
    """`entropy_distance_figure` written to ``path`` (PNG)."""
    figure = entropy_distance_figure(runs, title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
