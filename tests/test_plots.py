"""Specification of the comparison figures' data (``bandpo.training.plots``)."""

import numpy as np
import pytest
from optional_packages import import_if_installed

import_if_installed("matplotlib")

from bandpo.training.plots import entropy_against_distance, plot_entropy_against_distance  # noqa: E402


def records(kls, entropies):
    return [{"step": step, "policy/ppo_kl": kl, "entropy": entropy}
            for step, (kl, entropy) in enumerate(zip(kls, entropies, strict=True), start=1)]


def test_entropy_against_distance_is_the_seed_mean_of_cumulative_kl_and_of_entropy():
    seeds = [records([0.0, 0.1, 0.2], [2.0, 1.5, 1.0]), records([0.0, 0.3, 0.0], [2.0, 1.0, 0.5])]
    distance, entropy = entropy_against_distance(seeds)
    assert distance == pytest.approx([0.0, 0.2, 0.3])  # seed 0: 0, 0.1, 0.3; seed 1: 0, 0.3, 0.3
    assert entropy == pytest.approx([2.0, 1.25, 0.75])


def test_seeds_of_different_lengths_are_cut_to_the_shortest():
    seeds = [records([0.0, 0.1, 0.2], [2.0, 1.5, 1.0]), records([0.0, 0.1], [2.0, 1.5])]
    distance, entropy = entropy_against_distance(seeds)
    assert len(distance) == len(entropy) == 2


def test_runs_without_ppo_kl_give_no_curve(tmp_path):
    seeds = [[{"step": 1, "entropy": 1.0}]]
    assert entropy_against_distance(seeds) is None
    path = plot_entropy_against_distance({"clip": seeds, "band": [records([0.0, 0.1], [1.0, 0.9])]},
                                         tmp_path / "figure.png")
    assert path.stat().st_size > 0 and np.frombuffer(path.read_bytes()[:8], dtype=np.uint8)[1:4].tobytes() == b"PNG"
