"""The Band operator: per-token ratio bounds from an f-divergence trust region.

For the sampled token's old probability p = exp(old_log_prob) and the trust region
T = {Q : D_f(Q || P) <= delta} around the old next-token distribution P,

    upper(p) = max_{Q in T} Q(a) / p = max { r in [1, 1/p] : g_f(p, r) <= delta }
    lower(p) = min_{Q in T} Q(a) / p = min { r in [0, 1]   : g_f(p, r) <= delta }
    g_f(p, r) = p f(r) + (1 - p) f((1 - r p) / (1 - p))

(the optimum rescales every other token uniformly, so only p matters).
"""

from __future__ import annotations

import functools
import logging
import math

import torch
from torch import Tensor

from bandpo.divergences import Divergence, get_divergence

POSITIVE_LOG_PROB_TOLERANCE = 1e-4
"""Log-probabilities up to this much above 0 are rounding noise and read as 0 (p = 1)."""

COMPILE_MIN_TOKENS = 1 << 16
"""With ``compiled=None``, inputs at least this large use the fused (torch.compile) kernels."""

logger = logging.getLogger(__name__)


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


def _ratio_bounds(
    log_p: Tensor, delta: float, rule: Divergence, upper_max: float | None
) -> tuple[Tensor, Tensor]:
    lower, upper = rule.ratio_bounds(log_p.clamp(max=0.0), delta)
    return lower, upper if upper_max is None else upper.clamp(max=upper_max)


@functools.cache
def _fused_ratio_bounds():
    # dynamic: one kernel per (divergence, dtype, device) for every shape and delta
    return torch.compile(_ratio_bounds, dynamic=True)


_FUSED_FAILED: list[str] = []


def _bounds_fused_or_eager(
    log_p: Tensor, delta: float, rule: Divergence, upper_max: float | None, compiled: bool | None
) -> tuple[Tensor, Tensor]:
    """The fused kernels where asked (or, for ``compiled=None``, where the input is large)."""
    if compiled is None:
        # The generic solver's 80 unrolled steps take minutes to compile: fuse it only on request.
        solver_is_short = rule.bounds is not None or rule.shrink is not None
        compiled = solver_is_short and log_p.numel() >= COMPILE_MIN_TOKENS and not torch.compiler.is_compiling()
    if compiled and not _FUSED_FAILED:
        try:
            return _fused_ratio_bounds()(log_p, delta, rule, upper_max)
        except Exception as error:  # no C++ compiler / Triton, an unsupported platform, ...
            _FUSED_FAILED.append(f"{type(error).__name__}: {error}")
            logger.warning("bandpo.band: torch.compile failed, using eager kernels from now on (%s)", _FUSED_FAILED[0])
    return _ratio_bounds(log_p, delta, rule, upper_max)


def band(
    old_log_probs: Tensor,
    delta: float,
    divergence: str | Divergence = "kl",
    *,
    upper_max: float | None = None,
    validate: bool = True,
    compiled: bool | None = None,
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
        compiled: run the fused kernels built by ``torch.compile`` (one kernel for the whole
            solver, 10-50x fewer memory passes; the first call of each divergence/dtype/device
            compiles for 5-30 s). ``None`` (default) fuses inputs of at least 65,536 tokens,
            where it pays off, outside an enclosing ``torch.compile``, for divergences with a
            closed form or a dedicated solver (the generic solver of ``reverse_kl`` and
            user-defined divergences takes minutes to compile and is fused only with ``True``). If compilation fails (no
            C++ compiler, say) a warning is logged once and the eager kernels are used.

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
    if compiled not in (None, True, False):
        raise ValueError(f"compiled must be None, True or False, got {compiled!r}")
    with torch.no_grad():
        log_p = old_log_probs.detach().to(compute_dtype)
        lower, upper = _bounds_fused_or_eager(log_p, delta, rule, upper_max, compiled)
    return lower.to(old_log_probs.dtype), upper.to(old_log_probs.dtype)
