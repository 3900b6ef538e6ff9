"""Specification of ``bandpo.room``: how far a rule lets the sampled token's probability move.

    room(p) = min(p u, 1) - max(p l, 0)      (down: p - max(p l, 0); up: min(p u, 1) - p)

and the δ whose band has the mean room of a fixed interval on the same tokens.
"""

from __future__ import annotations

import math

import pytest
import torch

from bandpo import Band, FixedClip
from bandpo.band import DELTA_RANGE
from bandpo.room import delta_guide_rows, matching_delta, mean_room, probability_room, room_report


def log_p(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).log()


def test_fixed_interval_room_is_p_times_the_margins_clipped_to_the_simplex():
    x = log_p(0.1, 0.5, 0.9)
    down, up = probability_room(x, *FixedClip(0.2, 0.28).bounds(x))
    assert down.tolist() == pytest.approx([0.02, 0.1, 0.18])
    assert up.tolist() == pytest.approx([0.028, 0.14, 0.1])  # 0.9 * 1.28 > 1: the token can only reach 1


def test_tv_band_room_is_delta_each_way_within_the_simplex():
    """tv: q = p ± δ, clamped to [0, 1] (SPEC §2.1)."""
    x = log_p(0.01, 0.1, 0.5, 0.97)
    down, up = probability_room(x, *Band("tv", 0.05, None).bounds(x))
    assert down.tolist() == pytest.approx([0.01, 0.05, 0.05, 0.05])
    assert up.tolist() == pytest.approx([0.05, 0.05, 0.05, 0.03])


def test_kl_band_at_delta_0_05_gives_a_rare_token_more_room_than_clip_higher_both_ways():
    """p = 0.1: falls 0.069 and rises 0.120 under the band, 0.020 and 0.028 under clip-higher."""
    x = log_p(0.1)
    band_down, band_up = probability_room(x, *Band("kl", 0.05).bounds(x))
    assert (band_down.item(), band_up.item()) == pytest.approx((0.0687, 0.1201), abs=1e-4)


def test_mean_room_is_over_the_valid_tokens_only():
    x = torch.tensor([[0.1, 0.5], [0.9, float("nan")]], dtype=torch.float64).log()
    mask = torch.tensor([[1, 1], [1, 0]])
    expected = (0.048 + 0.24 + 0.28) / 3
    assert mean_room(FixedClip(0.2, 0.28), x, mask) == pytest.approx(expected)


def brute_force_matching_delta(old_log_probs, target, divergence, upper_max, points=3000):
    """The grid bracket [δ_i, δ_{i+1}] of log-spaced radii where the band's mean room first reaches target."""
    grid = torch.logspace(math.log10(DELTA_RANGE[0]), math.log10(DELTA_RANGE[1]), points, dtype=torch.float64).tolist()
    rooms = [mean_room(Band(divergence, delta, upper_max), old_log_probs) for delta in grid]
    index = next(i for i, room in enumerate(rooms) if room >= target)
    return grid[index - 1], grid[index]


@pytest.mark.parametrize("divergence", ["kl", "tv", "chi2"])
def test_matching_delta_agrees_with_a_brute_force_search(divergence):
    generator = torch.Generator().manual_seed(0)
    old_log_probs = torch.rand(400, generator=generator, dtype=torch.float64).pow(3).clamp_min(1e-4).log()
    target = mean_room(FixedClip(0.2, 0.28), old_log_probs)
    found = matching_delta(old_log_probs, target, divergence, upper_max=10.0)
    low, high = brute_force_matching_delta(old_log_probs, target, divergence, 10.0)
    assert low <= found <= high
    assert mean_room(Band(divergence, found, 10.0), old_log_probs) == pytest.approx(target, rel=1e-5)


def test_matching_delta_for_tv_is_half_the_target_when_no_token_saturates():
    """tv with δ below every min(p, 1 - p): room = 2δ per token, so the matching δ is target / 2."""
    x = log_p(0.3, 0.4, 0.5, 0.6)
    assert matching_delta(x, 0.1, "tv", None) == pytest.approx(0.05, rel=1e-5)


def test_matching_delta_is_none_when_no_radius_reaches_the_target():
    x = log_p(0.3, 0.5)
    assert matching_delta(x, 1.5, "kl") is None  # a probability moves by at most 1
    assert matching_delta(x, 0.0, "kl") is None  # even δ = 1e-6 gives some room


def test_room_report_compares_the_band_with_clip_higher_by_default():
    x = torch.tensor([[0.01, 0.1, 0.5], [0.9, 0.3, 1.0]], dtype=torch.float64).log()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    report = room_report(x, mask, divergence="kl", delta=0.05)
    valid = x[mask != 0]
    assert report.tokens == 5
    assert report.fixed_room == mean_room(FixedClip(0.2, 0.28), valid)
    assert report.band_room == mean_room(Band("kl", 0.05, 10.0), valid)
    assert report.band_room > report.fixed_room  # on this batch the band gives more room at 0.05 ...
    assert report.matching_delta < 0.05  # ... so the matching radius is smaller
    assert mean_room(Band("kl", report.matching_delta), valid) == pytest.approx(report.fixed_room, rel=1e-5)


@pytest.mark.parametrize("mask, message", [(torch.zeros(3), "mask selects no token"),
                                           (torch.ones(2), "mask must have the shape")])
def test_room_report_refuses_an_empty_or_misshapen_mask(mask, message):
    with pytest.raises(ValueError, match=message):
        room_report(log_p(0.1, 0.2, 0.3), mask)


def test_room_report_checks_delta():
    with pytest.raises(ValueError, match="delta"):
        room_report(log_p(0.1), delta=-1.0)


def test_delta_guide_rows_cover_the_fixed_intervals_then_each_divergence_and_radius():
    rows = dict(delta_guide_rows())
    assert list(rows)[:2] == ["clip (0.2/0.2)", "clip-higher (0.2/0.28)"]
    assert len(rows) == 2 + 3 * 4
    assert rows["kl, δ = 0.05"][1] == pytest.approx((0.0687, 0.1201), abs=1e-4)  # p = 0.1
    assert rows["tv, δ = 0.1"][2] == pytest.approx((0.1, 0.1))  # p = 0.5
    assert rows["clip-higher (0.2/0.28)"][3] == pytest.approx((0.18, 0.1))  # p = 0.9: capped at q = 1
