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

import torch
from torch import Tensor

from bandpo import cpu_kernels
from bandpo.checks import check_number
from bandpo.divergences import Divergence, get_divergence

POSITIVE_LOG_PROB_TOLERANCE = 1e-4
"""Log-probabilities up to this much above 0 are rounding noise and read as 0 (p = 1)."""

COMPILE_MIN_TOKENS = 1 << 16
"""With ``kernel="auto"``, inputs at least this large use the fused (torch.compile) kernels
unless the CPU kernels apply."""

KERNELS = ("auto", "eager", "fused", "native")

DELTA_RANGE = (1e-6, 1e3)
"""The radii the bounds are tested for (against a 50-digit reference, every divergence and kernel);
``band`` refuses others with ValueError. Both ends lie far beyond any useful trust region: at 1e3
the kl band is already the whole simplex [0, 1/p] to working precision."""

logger = logging.getLogger(__name__)


def check_delta(delta: float) -> float:
    """``delta`` as a float, or ValueError unless it is a number in DELTA_RANGE."""
    return check_number("delta", delta, low=DELTA_RANGE[0], high=DELTA_RANGE[1])


def check_upper_max(upper_max: float | None) -> float | None:
    """``upper_max`` as a float (>= 1) or None."""
    return check_number("upper_max", upper_max, low=1.0, allow_none=True, allow_infinity=True)


def check_kernel(kernel: str) -> str:
    """``kernel``, or ValueError unless it is one of KERNELS."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}, got {kernel!r}")
    return kernel


ACCEPTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes ``band`` computes bounds for (float8 has no arithmetic to solve with)."""


def check_log_prob_tensor(old_log_probs: object) -> None:
    """ValueError unless ``old_log_probs`` is a dense (strided) tensor with data (not on the meta device)
    of one of ACCEPTED_DTYPES; the message names what is accepted."""
    accepted = "a dense (strided) torch.Tensor of float16, bfloat16, float32 or float64 with data (not on 'meta')"
    if not isinstance(old_log_probs, Tensor):
        raise ValueError(f"old_log_probs must be {accepted}, got {type(old_log_probs).__name__}")
    if old_log_probs.dtype not in ACCEPTED_DTYPES:
        raise ValueError(f"old_log_probs must be {accepted}, got dtype {old_log_probs.dtype}")
    if old_log_probs.layout != torch.strided:
        raise ValueError(f"old_log_probs must be {accepted}, got layout {old_log_probs.layout}")
    if old_log_probs.is_meta:
        raise ValueError(f"old_log_probs must be {accepted}, got a tensor on the meta device")


def _must_validate(tensor: Tensor) -> bool:
    # A data-dependent check cannot run inside a traced graph or a CUDA-graph capture.
    if torch.compiler.is_compiling():
        return False
    return not (tensor.is_cuda and torch.cuda.is_current_stream_capturing())


def check_log_probs(old_log_probs: Tensor) -> None:
    """ValueError on NaN or clearly positive log-probabilities (one reduction, one sync)."""
    if not bool(old_log_probs.max() <= POSITIVE_LOG_PROB_TOLERANCE):  # max is NaN if any value is
        bad = old_log_probs[~(old_log_probs <= POSITIVE_LOG_PROB_TOLERANCE)]
        raise ValueError(
            "old_log_probs must be log-probabilities (<= 0, not NaN); found "
            f"{bad.numel()} invalid values such as {bad.flatten()[0].item()!r}"
        )


def _ratio_bounds(
    log_p: Tensor, delta: float, divergence: Divergence, upper_max: float | None
) -> tuple[Tensor, Tensor]:
    lower, upper = divergence.ratio_bounds(log_p.clamp(max=0.0), delta)
    return lower, upper if upper_max is None else upper.clamp(max=upper_max)


@functools.cache
def _fused_ratio_bounds():
    # dynamic: one kernel per (divergence, dtype, device) for every shape and delta
    return torch.compile(_ratio_bounds, dynamic=True)


_FUSED_FAILED: list[str] = []


def choose_kernel(kernel: str, log_p: Tensor, divergence: Divergence) -> str:
    """The kernel that computes the bounds of ``log_p`` (already in the compute dtype).

    ``"auto"``: inside an enclosing torch.compile, eager (traced into its graph); else the CPU
    kernels where they apply; else fused for inputs of COMPILE_MIN_TOKENS or more whose divergence
    has a closed form or a dedicated solver (the generic solver's 80 unrolled steps take minutes
    to compile); else eager.
    """
    if kernel != "auto":  # an unsupported "native" is refused by cpu_kernels.ratio_bounds
        return kernel
    if torch.compiler.is_compiling():
        return "eager"
    if cpu_kernels.supports(log_p, divergence) and cpu_kernels.available():
        return "native"
    solver_is_short = divergence.bounds is not None or divergence.shrink is not None
    return "fused" if solver_is_short and log_p.numel() >= COMPILE_MIN_TOKENS else "eager"


def _bounds(
    log_p: Tensor, delta: float, divergence: Divergence, upper_max: float | None, kernel: str
) -> tuple[Tensor, Tensor]:
    if kernel == "native":
        return cpu_kernels.ratio_bounds(log_p, delta, divergence, upper_max)
    if kernel == "fused" and not _FUSED_FAILED:
        try:
            return _fused_ratio_bounds()(log_p, delta, divergence, upper_max)
        except Exception as error:  # no C++ compiler / Triton, an unsupported platform, ...
            _FUSED_FAILED.append(f"{type(error).__name__}: {error}")
            logger.warning("bandpo.band: torch.compile failed, using eager kernels from now on (%s)", _FUSED_FAILED[0])
    return _ratio_bounds(log_p, delta, divergence, upper_max)


def band(
    old_log_probs: Tensor,
    delta: float,
    divergence: str | Divergence = "kl",
    *,
    upper_max: float | None = None,
    validate: bool = True,
    kernel: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Ratio bounds (lower, upper) of the f-divergence trust region of radius ``delta``.

    Args:
        old_log_probs: log pi_old(a_t | s_t) of the sampled tokens; any shape, floating dtype,
            device. log-prob -inf (p = 0) gives (0, +inf); 0 (p = 1) gives (`r*`, 1) where `r*` is
            the divergence's limit (exp(-delta) for ``kl``).
        delta: radius of the trust region, in [1e-6, 1e3] (DELTA_RANGE; ValueError outside).
        divergence: ``"kl"`` (default), ``"tv"``, ``"chi2"``, ``"reverse_kl"``,
            ``"hellinger"``, or a `bandpo.Divergence` built from any generator f.
        upper_max: cap on the upper bound (the published runs used 10); None for no cap.
        validate: reject NaN or positive log-probabilities with ValueError. This costs one
            reduction and, on accelerators, one host synchronisation; it is skipped inside
            ``torch.compile`` and CUDA-graph capture. Without it, NaN inputs give NaN bounds and
            positive inputs are read as 0.
        kernel: how the bounds are computed; every kernel gives the same bounds to rounding.
            ``"eager"``: PyTorch operations (any device and dtype, safe in CUDA graphs).
            ``"fused"``: one kernel built by torch.compile (the first call for each divergence,
            dtype and device compiles for 5-30 s, minutes for the generic solver); if
            compilation fails, a warning is logged once and eager is used.
            ``"native"``: the C kernels of `bandpo.cpu_kernels` for kl, tv and chi2 on CPU
            tensors of float32, bfloat16 or float16, compiled when bandpo was installed (an
            optional extension: where no C compiler was available then, NativeKernelError).
            ``"auto"`` (default): native where it applies and was built, else fused for inputs of
            at least 65,536 tokens of a divergence with a closed form or a dedicated solver,
            else eager; always eager inside an enclosing torch.compile.

    Returns:
        (lower, upper) with the shape, dtype and device of ``old_log_probs``, lower in [0, 1],
        upper in [1, min(1/p, upper_max)], no autograd history. Computed in float64 for float64
        input and in float32 otherwise.

    Example (the paper's delta = 0.1, float64):

        >>> import torch, bandpo
        >>> lower, upper = bandpo.band(torch.log(torch.tensor([0.08, 0.5, 0.9], dtype=torch.float64)), 0.1)
        >>> [round(x, 5) for x in lower.tolist()], [round(x, 5) for x in upper.tolist()]
        ([0.12306, 0.57424, 0.79736], [3.16885, 1.42576, 1.09271])
    """
    check_log_prob_tensor(old_log_probs)
    delta = check_delta(delta)
    upper_max = check_upper_max(upper_max)
    kernel = check_kernel(kernel)
    divergence = get_divergence(divergence)
    if old_log_probs.numel() == 0:
        return torch.empty_like(old_log_probs), torch.empty_like(old_log_probs)
    if validate and _must_validate(old_log_probs):
        check_log_probs(old_log_probs)
    compute_dtype = torch.float64 if old_log_probs.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        log_p = old_log_probs.detach().to(compute_dtype)
        lower, upper = _bounds(log_p, delta, divergence, upper_max, choose_kernel(kernel, log_p, divergence))
    return lower.to(old_log_probs.dtype), upper.to(old_log_probs.dtype)
