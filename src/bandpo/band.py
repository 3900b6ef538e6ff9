"""The Band operator: per-token ratio bounds from an f-divergence trust region.

For the sampled token's old probability p = exp(old_log_prob) and the trust region
T = {Q : D_f(Q || P) <= delta} around the old next-token distribution P,

    upper(p) = max_{Q in T} Q(a) / p = max { r in [1, 1/p] : g_f(p, r) <= delta }
    lower(p) = min_{Q in T} Q(a) / p = min { r in [0, 1]   : g_f(p, r) <= delta }
    g_f(p, r) = p f(r) + (1 - p) f((1 - r p) / (1 - p))

(the optimum rescales every other token uniformly, so only p matters).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bandpo.divergences import Divergence, get_divergence

POSITIVE_LOG_PROB_TOLERANCE = 1e-4
"""Log-probabilities up to this much above 0 are rounding noise and read as 0 (p = 1)."""


def check_delta(delta: float) -> float:
    """``delta`` as a float, or ValueError unless it is a finite positive number."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise ValueError(f"delta must be a finite positive number, got {delta!r}")
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a finite positive number, got {delta!r}")
    return float(delta)


def check_upper_max(upper_max: float | None) -> float | None:
    """``upper_max`` as a float (>= 1) or None."""
    if upper_max is None:
        return None
    if isinstance(upper_max, bool) or not isinstance(upper_max, (int, float)) or not upper_max >= 1:
        raise ValueError(f"upper_max must be None or a number >= 1, got {upper_max!r}")
    return float(upper_max)


def _must_validate(tensor: Tensor) -> bool:
    # A data-dependent check cannot run inside a traced graph or a CUDA-graph capture.
    if torch.compiler.is_compiling():
        return False
    return not (tensor.is_cuda and torch.cuda.is_current_stream_capturing())


def check_log_probs(old_log_probs: Tensor) -> None:
    """ValueError on NaN or clearly positive log-probabilities (one reduction, one sync)."""
    valid = old_log_probs <= POSITIVE_LOG_PROB_TOLERANCE  # False for NaN
    if not bool(valid.all()):
        bad = old_log_probs[~valid]
        raise ValueError(
            "old_log_probs must be log-probabilities (<= 0, not NaN); found "
            f"{bad.numel()} invalid values such as {bad.flatten()[0].item()!r}"
        )


def band(
    old_log_probs: Tensor,
    delta: float,
    divergence: str | Divergence = "kl",
    *,
    upper_max: float | None = None,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """Ratio bounds (lower, upper) of the f-divergence trust region of radius ``delta``.

    Args:
        old_log_probs: log pi_old(a_t | s_t) of the sampled tokens; any shape, floating dtype,
            device. log-prob -inf (p = 0) gives (0, +inf); 0 (p = 1) gives (r*, 1) where r* is
            the divergence's limit (exp(-delta) for ``kl``).
        delta: radius of the trust region, a finite positive number.
        divergence: ``"kl"`` (default), ``"tv"``, ``"chi2"``, ``"reverse_kl"``,
            ``"hellinger"``, or a :class:`bandpo.Divergence` built from any generator f.
        upper_max: cap on the upper bound (the published runs used 10); None for no cap.
        validate: reject NaN or positive log-probabilities with ValueError. This costs one
            reduction and, on accelerators, one host synchronisation; it is skipped inside
            ``torch.compile`` and CUDA-graph capture. Without it, NaN inputs give NaN bounds and
            positive inputs are read as 0.

    Returns:
        (lower, upper) with the shape, dtype and device of ``old_log_probs``, lower in [0, 1],
        upper in [1, min(1/p, upper_max)], no autograd history. Computed in float64 for float64
        input and in float32 otherwise.
    """
    if not isinstance(old_log_probs, Tensor) or not old_log_probs.is_floating_point():
        raise ValueError(
            "old_log_probs must be a floating-point torch.Tensor, got "
            f"{getattr(old_log_probs, 'dtype', type(old_log_probs).__name__)}"
        )
    delta = check_delta(delta)
    upper_max = check_upper_max(upper_max)
    rule = get_divergence(divergence)
    if old_log_probs.numel() == 0:
        return torch.empty_like(old_log_probs), torch.empty_like(old_log_probs)
    if validate and _must_validate(old_log_probs):
        check_log_probs(old_log_probs)
    compute_dtype = torch.float64 if old_log_probs.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        log_p = old_log_probs.detach().to(compute_dtype).clamp(max=0.0)
        lower, upper = rule.ratio_bounds(log_p, delta)
        if upper_max is not None:
            upper = upper.clamp_(max=upper_max)
    return lower.to(old_log_probs.dtype), upper.to(old_log_probs.dtype)
