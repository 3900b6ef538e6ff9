"""Room: how far a rule lets the sampled token's probability move, and the δ that matches a fixed clip.

For a token with old probability p and ratio bounds [l, u], the new probability q = r p may move in

    [max(p l, 0), min(p u, 1)]        room(p) = min(p u, 1) - max(p l, 0) = p (u - l) inside the simplex

(the fixed interval [1 - eps_low, 1 + eps_high] is clipped to the simplex like the band, which never
leaves it). The mean room over a batch of sampled tokens says how much probability a rule lets an update
move in all, wherever it puts it: the band gives rare tokens room that clip gives confident ones.
`matching_delta` finds the radius whose band has the same mean room as a fixed interval on the same
tokens (the band's room grows with δ, so the root is unique; bisection on log δ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bandpo.band import DELTA_RANGE, check_delta, check_upper_max
from bandpo.divergences import Divergence
from bandpo.rules import Band, BoundRule, FixedClip

MATCH_RELATIVE_TOLERANCE = 1e-6
"""`matching_delta` stops when the δ bracket is this narrow relative to δ."""


def probability_room(old_log_probs: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """(down, up): how far q = r p may fall and rise, p - max(p l, 0) and min(p u, 1) - p, per token."""
    p = old_log_probs.exp()
    return p - (p * lower).clamp_min(0.0), (p * upper).clamp_max(1.0) - p


def mean_room(rule: BoundRule, old_log_probs: Tensor, mask: Tensor | None = None) -> float:
    """Mean over the valid tokens of room(p) = min(p u, 1) - max(p l, 0) under ``rule``'s bounds."""
    old_log_probs, valid = _valid_log_probs(old_log_probs, mask)
    lower, upper = rule.bounds(old_log_probs)
    down, up = probability_room(old_log_probs, lower.to(old_log_probs.dtype), upper.to(old_log_probs.dtype))
    return (down + up).mean().item()


def _valid_log_probs(old_log_probs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The valid tokens' old log-probs in float64, flat; ValueError if there are none or the mask is misshapen."""
    if mask is None:
        mask = torch.ones_like(old_log_probs, dtype=torch.bool)
    if mask.shape != old_log_probs.shape:
        raise ValueError(f"mask must have the shape of old_log_probs {tuple(old_log_probs.shape)}, got {tuple(mask.shape)}")
    valid = mask != 0
    if not bool(valid.any()):
        raise ValueError("mask selects no token: the room of an empty batch is undefined")
    return old_log_probs.detach()[valid].to(torch.float64), valid


@dataclass(frozen=True)
class RoomReport:
    """The band's mean room at ``delta`` against a fixed interval's on the same tokens, and the δ that matches.

    ``matching_delta`` is None when no δ in `bandpo.band.DELTA_RANGE` gives the fixed interval's room
    (the band's room is then larger even at the smallest δ, or its cap keeps it smaller at every δ).
    """

    tokens: int
    band_room: float
    fixed_room: float
    matching_delta: float | None


def matching_delta(
    old_log_probs: Tensor,
    target_room: float,
    divergence: str | Divergence = "kl",
    upper_max: float | None = 10.0,
    mask: Tensor | None = None,
) -> float | None:
    """The δ whose band has mean room ``target_room`` on these tokens, by bisection on log δ over
    `bandpo.band.DELTA_RANGE`; None if the room at the ends of that range does not bracket it."""
    old_log_probs, _ = _valid_log_probs(old_log_probs, mask)
    check_upper_max(upper_max)

    def room_at(delta: float) -> float:
        return mean_room(Band(divergence, delta, upper_max), old_log_probs)

    low, high = DELTA_RANGE
    if not room_at(low) <= target_room <= room_at(high):
        return None
    while high - low > MATCH_RELATIVE_TOLERANCE * low:
        middle = math.sqrt(low * high)
        if room_at(middle) < target_room:
            low = middle
        else:
            high = middle
    return math.sqrt(low * high)


def room_report(
    old_log_probs: Tensor,
    mask: Tensor | None = None,
    *,
    divergence: str | Divergence = "kl",
    delta: float = 0.05,
    upper_max: float | None = 10.0,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
) -> RoomReport:
    """The band's mean room on the valid tokens of ``old_log_probs`` (e.g. from your own rollouts) against
    the fixed interval [1 - eps_low, 1 + eps_high] (default: clip-higher), and the δ that matches it."""
    check_delta(delta)
    tokens, _ = _valid_log_probs(old_log_probs, mask)
    fixed = mean_room(FixedClip(eps_low, eps_high), tokens)
    return RoomReport(
        tokens=tokens.numel(),
        band_room=mean_room(Band(divergence, delta, upper_max), tokens),
        fixed_room=fixed,
        matching_delta=matching_delta(tokens, fixed, divergence, upper_max),
    )


def delta_guide_rows(
    divergences: tuple[str, ...] = ("kl", "tv", "chi2"),
    deltas: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1),
    probabilities: tuple[float, ...] = (0.01, 0.1, 0.5, 0.9),
    fixed: tuple[tuple[str, float, float], ...] = (("clip", 0.2, 0.2), ("clip-higher", 0.2, 0.28)),
    upper_max: float | None = 10.0,
) -> list[tuple[str, list[tuple[float, float]]]]:
    """(label, [(down, up) at each p]) for each fixed interval, then each divergence at each δ: the room
    tables of the docs' guide to δ."""
    log_p = torch.tensor(probabilities, dtype=torch.float64).log()
    rules: list[tuple[str, BoundRule]] = [(f"{name} ({low}/{high})", FixedClip(low, high)) for name, low, high in fixed]
    rules += [(f"{name}, δ = {delta}", Band(name, delta, upper_max)) for name in divergences for delta in deltas]
    rows = []
    for label, rule in rules:
        down, up = probability_room(log_p, *rule.bounds(log_p))
        rows.append((label, list(zip(down.tolist(), up.tolist(), strict=True))))
    return rows
