"""PNG plots of a run's training dynamics and of a comparison (the layout of the paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bandpo.training.statistics import STEP_METRICS  # noqa: E402

PANEL_TITLES = ("(a) clip rate", "(b) low-p (p<0.2) clip-high share", "(c) policy entropy", "reward")
PANELS = tuple(zip(STEP_METRICS, PANEL_TITLES))
"""Metric and title of each panel: the paper's Figure 3 (a)-(c), plus the reward."""


def metric_series(records: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``metric`` across log records that have it."""
    points = [(record["step"], record[metric]) for record in records if metric in record and "step" in record]
    if not points:
        return np.array([]), np.array([])
    steps, values = zip(*points)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def plot_training(records: list[dict], path: Path, title: str = "") -> Path:
    """2x2 figure of the run's clip rate, low-p clip-high share, entropy and reward against step."""
    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    for axis, (metric, label) in zip(axes.flat, PANELS):
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


def plot_comparison(runs: dict[str, list[list[dict]]], path: Path, title: str = "") -> Path:
    """1x4 figure, one line per method (mean over seeds, shaded mean +- sd), panels as `PANELS`."""
    figure, axes = plt.subplots(1, 4, figsize=(18, 4))
    for method, seed_records in runs.items():
        for axis, (metric, label) in zip(axes, PANELS):
            series = [metric_series(records, metric) for records in seed_records]
            series = [(steps, values) for steps, values in series if len(steps)]
            if not series:
                continue
            length = min(len(steps) for steps, _ in series)
            steps = series[0][0][:length]
            stacked = np.stack([values[:length] for _, values in series])
            mean = stacked.mean(axis=0)
            (line,) = axis.plot(steps, mean, label=f"{method} (n={len(series)})")
            if len(series) > 1:
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
