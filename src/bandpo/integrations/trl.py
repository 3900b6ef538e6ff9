"""BandPO for TRL 1.12 to 1.16: `BandPOConfig` and `BandPOTrainer`.

``BandPOTrainer`` is a thin subclass of ``trl.GRPOTrainer``. TRL clips the ratio with
``torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)`` and counts clipped tokens with
the same two attributes. Immediately before each loss computation the trainer sets them to per-token
tensors, ``epsilon_low = 1 - lower`` and ``epsilon_high = upper - 1`` from the bound rule applied to
the batch's old log-probabilities, and restores the scalars afterwards. Nothing else of
``_compute_loss`` is touched, so every TRL feature around the clip (accelerate multi-process,
DeepSpeed/FSDP, PEFT, vLLM generation and its importance-sampling correction, reference-model KL
``beta``, dual clip ``delta``, entropy masks and bonus, every aggregation of the clipping loss types)
works as in TRL, and TRL's own ``clip_ratio/low_mean``, ``high_mean``, ``region_mean`` count tokens
against the per-token bounds. BandPO's extra diagnostics are logged beside them.

This relies on private TRL code (``GRPOTrainer._compute_loss`` is the same from TRL 1.12 to 1.16 but
for a comment), so it is guarded three times:

- at import, the installed TRL must be in `SUPPORTED_TRL` (ImportError otherwise;
  ``BANDPO_ALLOW_UNTESTED_TRL=1`` downgrades it to a warning);
- on every training step and every ``compute_loss`` call, the loss must have been computed through
  ``_compute_loss``, where the bounds are set (`TRLCompatibilityError` otherwise: TRL < 1.14 with
  ``use_liger_kernel=True`` computes it in ``compute_liger_loss`` with the scalar epsilons);
- on every loss call, TRL must have computed the policy log-probabilities exactly once through
  ``_get_per_token_logps_and_entropies`` and logged clip counts equal to those of the epsilons the
  trainer set (`TRLCompatibilityError` otherwise): a TRL whose loss reads other epsilons
  stops training at the first batch where those clip other tokens, instead of training on with the
  wrong clip. (On-policy batches, ratio 1, clip nothing under any bounds: nothing to tell apart.)

Loss types: ``grpo``, ``bnpo``, ``dr_grpo``, ``dapo`` and ``luspo`` clip the ratio on both sides;
``cispo`` truncates the importance weight at ``epsilon_high`` itself, which becomes ``upper``
(per-token rules only). ``sapo`` and ``vespo`` do not clip the ratio and are rejected.

Every BandPO field carries the ``bandpo_`` prefix. BandPO's radius is ``bandpo_delta``: the name
``delta`` belongs to GRPOConfig (TRL's two-sided clip, i.e. the dual-clip constant ``c`` of the
paper, which the published runs set to 10).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import trl
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from torch import Tensor

from bandpo.band import DELTA_RANGE
from bandpo.checks import check_number
from bandpo.divergences import DIVERGENCES
from bandpo.metrics import DENOMINATORS, clip_metrics, reduce_weights
from bandpo.rules import (
    CLIP_METHOD_TABLE,
    CLIP_METHODS,
    DCPO_EPS_HIGH,
    DCPO_EPS_LOW,
    DEFAULT_DELTA,
    DEFAULT_DIVERGENCE,
    DEFAULT_UPPER_MAX,
    BoundRule,
    check_clip_method,
    check_eps_low,
    make_rule,
)

logger = logging.getLogger(__name__)

SUPPORTED_TRL = ">=1.12,<1.17"
"""TRL releases whose ``GRPOTrainer._compute_loss`` this module is tested against (the ``trl`` extra
of pyproject.toml pins the same range; scripts/test-trl-matrix.sh runs the tests on 1.12.0, 1.13.0,
1.14.2 and 1.16.0, while 1.15, whose loss is 1.16's, is untested on CPU: its fused LM head needs Triton)."""
ALLOW_UNTESTED_TRL = "BANDPO_ALLOW_UNTESTED_TRL"
"""Environment variable: ``1`` turns the import-time version refusal into a warning. The per-call
check of `BandPOTrainer` still raises if that TRL does not apply the bounds."""


def trl_version_supported(version: str) -> bool:
    """Whether TRL ``version`` is in `SUPPORTED_TRL` (development releases of it included)."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return SpecifierSet(SUPPORTED_TRL).contains(parsed, prereleases=True)


def check_trl_version(version: str, allow_untested: bool | None = None) -> None:
    """ImportError unless TRL ``version`` is supported; a RuntimeWarning instead when ``allow_untested``
    (default: the environment variable `ALLOW_UNTESTED_TRL` is ``1``)."""
    if trl_version_supported(version):
        return
    if allow_untested is None:
        allow_untested = os.environ.get(ALLOW_UNTESTED_TRL, "").strip() == "1"
    message = (
        f"bandpo.integrations.trl supports TRL {SUPPORTED_TRL}, but TRL {version} is installed. BandPOTrainer sets "
        "TRL's private per-token clip (GRPOTrainer._compute_loss), which TRL changes between releases"
    )
    if allow_untested:
        warnings.warn(
            f"{message}. Continuing because {ALLOW_UNTESTED_TRL}=1: every loss call still checks that TRL applied "
            "the per-token bounds and raises TRLCompatibilityError if it did not.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    raise ImportError(
        f"{message}. Install a supported TRL (pip install 'trl{SUPPORTED_TRL}'), or set {ALLOW_UNTESTED_TRL}=1 to try "
        "this one (every loss call then still checks that TRL applied the per-token bounds)."
    )


check_trl_version(trl.__version__)

from trl import GRPOConfig, GRPOTrainer  # noqa: E402  (after the version check: the names may differ elsewhere)


class TRLCompatibilityError(RuntimeError):
    """TRL's loss did not apply (or could not be shown to apply) the bounds BandPOTrainer set."""


TWO_SIDED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
"""TRL loss types that clip the ratio to [1 - epsilon_low, 1 + epsilon_high]."""
TRUNCATING_LOSS_TYPES = ("cispo",)
"""TRL loss types that truncate the (detached) importance weight at epsilon_high."""
PER_TOKEN_METHODS = tuple(name for name, method in CLIP_METHOD_TABLE.items() if method.per_token)
"""Rules whose bounds depend on the token's old probability."""
TRL_CLIP_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
"""Logged by TRL itself (against the per-token bounds); not logged twice."""
TRL_CISPO_METRIC = "cispo_clip_ratio"
"""TRL's share of truncated tokens for loss_type cispo."""
EPSILON_HIGH_DEFAULTS = {
    name: method.eps_high
    for name, method in CLIP_METHOD_TABLE.items()
    if method.margins == "fixed" and method.eps_high != method.eps_low
}
"""epsilon_high of the rules whose published upper margin is not their lower one (clip-higher's 0.28),
set when GRPOConfig's epsilon_high is unset (TRL's own default is epsilon)."""
GUARD_TOLERANCE = 2.0**-20
"""Relative slack per valid token of the per-call check (`clip_counts_agree`): float32 rounding of the
mean TRL logs is 2^-24 relative per operation."""


class Epsilons(NamedTuple):
    """TRL's clip attributes ``epsilon_low`` / ``epsilon_high``: floats, or per-token tensors while
    BandPOTrainer's loss runs. Two-sided loss types clamp the ratio to [1 - low, 1 + high]; cispo
    truncates it at ``high``."""

    low: Tensor | float
    high: Tensor | float


class RatioBounds(NamedTuple):
    """A bound rule's per-token ratio interval [lower, upper], 1 on padding."""

    lower: Tensor
    upper: Tensor


def upper_max_from_text(value: float | str | None) -> float | str | None:
    """``bandpo_upper_max`` as given on a command line: "None" / "none" is None, a number's text is that
    number; anything else is left for the range check to refuse."""
    if not isinstance(value, str):
        return value
    if value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        return value


@dataclass
class BandPOConfig(GRPOConfig):
    r"""
    GRPOConfig plus the ratio-bound rule of BandPO. Every BandPO field starts with `bandpo_`.

    Parameters:
        bandpo_clip_method (`str`, *optional*, defaults to `"band"`):
            Rule for the ratio interval: `"band"` (BandPO), `"band-relax"` (the band widened to contain
            `[1 - epsilon, 1 + epsilon_high]`, `epsilon_high` defaulting to 0.28), `"band-upper"` (the band's upper
            bound over the floor `1 - epsilon`), `"band-lower"` (the band's lower bound under the ceiling
            `1 + epsilon_high`, defaulting to 0.28), `"clip"` (TRL's
            `[1 - epsilon, 1 + epsilon_high]`), `"clip-higher"` (the same with `epsilon_high` defaulting to 0.28,
            DAPO) or `"dcpo"`.
        bandpo_divergence (`str`, *optional*, defaults to `"kl"`):
            f-divergence of the band's trust region: `"kl"`, `"tv"`, `"chi2"`, `"reverse_kl"` or `"hellinger"`.
        bandpo_delta (`float`, *optional*, defaults to `0.05`):
            Radius of the band's trust region (> 0). Not GRPOConfig's `delta`, which is TRL's two-sided clip.
        bandpo_upper_max (`float` or `None`, *optional*, defaults to `10.0`):
            Cap on the upper ratio bound of `"band"`, `"band-relax"`, `"band-upper"` and `"dcpo"` (>= 1); `None` for
            no cap.
        bandpo_dcpo_eps_low (`float`, *optional*, defaults to `0.16`):
            DCPO's lower margin.
        bandpo_dcpo_eps_high (`float`, *optional*, defaults to `0.20`):
            DCPO's upper margin.
    """

    bandpo_clip_method: str = field(
        default="band",
        metadata={"help": "Ratio-bound rule.", "choices": list(CLIP_METHODS)},
    )
    bandpo_divergence: str = field(
        default=DEFAULT_DIVERGENCE,
        metadata={"help": "f-divergence of the band's trust region.", "choices": list(DIVERGENCES)},
    )
    bandpo_delta: float = field(
        default=DEFAULT_DELTA,
        metadata={"help": "Radius of the band's trust region (> 0). GRPOConfig's `delta` is TRL's two-sided clip."},
    )
    bandpo_upper_max: float | str | None = field(
        default=DEFAULT_UPPER_MAX,
        metadata={"help": "Cap on the upper ratio bound of band, band-relax and dcpo (>= 1); None for no cap."},
    )  # str: TRL's command-line parser passes "None" (or "10") as text; __post_init__ reads it
    bandpo_dcpo_eps_low: float = field(default=DCPO_EPS_LOW, metadata={"help": "DCPO's lower margin."})
    bandpo_dcpo_eps_high: float = field(default=DCPO_EPS_HIGH, metadata={"help": "DCPO's upper margin."})

    def __post_init__(self) -> None:
        self.bandpo_upper_max = upper_max_from_text(self.bandpo_upper_max)
        check_clip_method(self.bandpo_clip_method, "bandpo_clip_method")
        if self.bandpo_clip_method in EPSILON_HIGH_DEFAULTS and self.epsilon_high is None:
            self.epsilon_high: float | None = EPSILON_HIGH_DEFAULTS[self.bandpo_clip_method]
        super().__post_init__()
        clipping = TWO_SIDED_LOSS_TYPES + TRUNCATING_LOSS_TYPES
        if self.loss_type not in clipping:
            raise ValueError(
                f"loss_type {self.loss_type!r} does not clip the ratio, so BandPOConfig cannot bound it; "
                f"loss_type must be one of {', '.join(clipping)} (use trl.GRPOTrainer for the others)"
            )
        if self.loss_type in TRUNCATING_LOSS_TYPES and self.bandpo_clip_method not in PER_TOKEN_METHODS:
            raise ValueError(
                f"loss_type {self.loss_type!r} truncates at epsilon_high itself; with bandpo_clip_method "
                f"{self.bandpo_clip_method!r} use trl.GRPOTrainer, or set bandpo_clip_method to one of "
                f"{', '.join(PER_TOKEN_METHODS)}"
            )
        if self.bandpo_clip_method in PER_TOKEN_METHODS and self.importance_sampling_level != "token":
            raise ValueError(
                f"bandpo_clip_method {self.bandpo_clip_method!r} bounds each token by its own probability and needs "
                f"importance_sampling_level='token', got {self.importance_sampling_level!r}"
            )
        # TRL's dual clip, checked as policy_loss checks its dual_clip (TRL itself accepts NaN, which trains on loss 0)
        check_number("delta", self.delta, low=1.0, low_open=True, allow_none=True)
        self.bound_rule()  # validates the rule's fields, naming them

    def fixed_margins(self) -> tuple[float, float]:
        """(epsilon, epsilon_high or epsilon): the margins of clip, clip-higher and band-relax."""
        return self.epsilon, self.epsilon if self.epsilon_high is None else self.epsilon_high

    def bound_rule(self) -> BoundRule:
        """The rule named by ``bandpo_clip_method`` with this config's parameters.

        ValueError names the config field that is out of range.
        """
        clip_method = self.bandpo_clip_method
        # Every field is range-checked, also those the chosen rule ignores: a typo there is still a typo.
        if self.bandpo_divergence not in DIVERGENCES:
            raise ValueError(f"bandpo_divergence must be one of {', '.join(DIVERGENCES)}, got {self.bandpo_divergence!r}")
        check_number("bandpo_delta", self.bandpo_delta, low=DELTA_RANGE[0], high=DELTA_RANGE[1])
        upper_max = check_number("bandpo_upper_max", self.bandpo_upper_max, low=1.0, allow_none=True, allow_infinity=True)
        dcpo_margins = (check_number("bandpo_dcpo_eps_low", self.bandpo_dcpo_eps_low, low=0.0),
                        check_number("bandpo_dcpo_eps_high", self.bandpo_dcpo_eps_high, low=0.0))
        fixed_margins = self.fixed_margins()
        check_eps_low("epsilon", fixed_margins[0])
        check_number("epsilon_high", fixed_margins[1], low=0.0)
        eps_low, eps_high = dcpo_margins if clip_method == "dcpo" else fixed_margins
        return make_rule(
            clip_method,
            divergence=self.bandpo_divergence,
            delta=self.bandpo_delta,
            upper_max=upper_max,
            eps_low=eps_low,
            eps_high=eps_high,
        )


def never_off_policy(args: GRPOConfig, use_vllm_importance_sampling: bool = False) -> bool:
    """True when TRL never keeps old log-probabilities, so the ratio is identically 1.

    TRL reuses a generation off-policy only when ``gradient_accumulation_steps`` is not a multiple of
    ``steps_per_generation * num_iterations`` (or when vLLM's importance-sampling correction is on);
    otherwise every update happens inside one optimizer step on the policy that sampled.
    """
    generate_every = args.steps_per_generation * args.num_iterations
    return args.gradient_accumulation_steps % generate_every == 0 and not use_vllm_importance_sampling


def bounds_on_valid_tokens(rule: BoundRule, old_log_probs: Tensor, mask: Tensor) -> RatioBounds:
    """The rule's (lower, upper) on valid tokens; 1 on padding (masked out of every loss)."""
    valid = mask > 0
    lower = torch.ones_like(old_log_probs)
    upper = torch.ones_like(old_log_probs)
    valid_lower, valid_upper = rule.bounds(old_log_probs[valid].detach())
    lower[valid] = valid_lower.to(lower.dtype)
    upper[valid] = valid_upper.to(upper.dtype)
    return RatioBounds(lower, upper)


def epsilons_for_loss_type(loss_type: str, bounds: RatioBounds, scalars: Epsilons) -> Epsilons:
    """The epsilons that make TRL's clip of ``loss_type`` the interval ``bounds``.

    Two-sided types clamp to [1 - epsilon_low, 1 + epsilon_high], so epsilon_low = 1 - lower and
    epsilon_high = upper - 1; cispo truncates at epsilon_high = upper and ignores epsilon_low, which
    keeps its scalar.
    """
    if loss_type in TRUNCATING_LOSS_TYPES:
        return Epsilons(scalars.low, bounds.upper)
    return Epsilons(1.0 - bounds.lower, bounds.upper - 1.0)


def trl_clip_counts(
    loss_type: str,
    ratio: Tensor,
    advantages: Tensor,
    epsilons: Epsilons,
    dual_clip: float | None,
    mask: Tensor,
) -> dict[str, Tensor]:
    """The number of valid tokens TRL's ``_compute_loss`` counts into each of its clip metrics, had it
    clipped with ``epsilons``; TRL logs each as that count over the valid tokens.

    The same expressions as TRL 1.12-1.16 (so the same floating-point thresholds, ``1 - epsilon_low``
    and ``1 + epsilon_high``), with r' = min(r, dual_clip) (r itself without a dual clip):

        two-sided  clip_ratio/low_mean     r' < 1 - epsilon_low  and A < 0
                   clip_ratio/high_mean    r' > 1 + epsilon_high and A > 0
                   clip_ratio/region_mean  either
        cispo      cispo_clip_ratio        r > epsilon_high and A > 0

    ``ratio`` and ``mask`` are (B, T), ``advantages`` (B, T) or (B, 1); returns 0-d float tensors.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    valid = mask.float()
    if loss_type in TRUNCATING_LOSS_TYPES:
        flags = {TRL_CISPO_METRIC: (ratio > epsilons.high) & (advantages > 0)}
    else:
        if dual_clip is not None:
            ratio = torch.clamp(ratio, max=dual_clip)
        low = (ratio < 1 - epsilons.low) & (advantages < 0)
        high = (ratio > 1 + epsilons.high) & (advantages > 0)
        low_name, high_name, region_name = TRL_CLIP_METRICS
        flags = {low_name: low, high_name: high, region_name: low | high}
    return {name: (flagged.float() * valid).sum() for name, flagged in flags.items()}


def clip_counts_agree(logged_mean: float, expected_count: float, valid_tokens: float) -> bool:
    """Whether the clip share TRL logged over N = ``valid_tokens`` is the expected count of clipped tokens:

        | logged_mean * max(N, 1) - expected_count |  <=  1/2 + GUARD_TOLERANCE * N

    Both sides are the same expressions on the same tensors, so they differ only by float32 rounding
    of TRL's mean (far below 2^-20 relative); a single token counted differently is a difference of 1.
    NaN never agrees.
    """
    trl_count = logged_mean * max(valid_tokens, 1.0)
    return abs(trl_count - expected_count) <= 0.5 + GUARD_TOLERANCE * valid_tokens


@dataclass
class TRLLossCapture:
    """What BandPOTrainer sees of one call of TRL's ``_compute_loss``: the epsilons it set for it, how
    many values each TRL clip metric held before, and the policy log-probabilities TRL computed."""

    epsilons: Epsilons
    metric_lengths_before: dict[str, int]
    log_prob_calls: int = 0
    log_probs: Tensor | None = None

    def record_log_probs(self, log_probs: Tensor) -> None:
        self.log_prob_calls += 1
        self.log_probs = log_probs.detach()


class BandPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose ratio clip interval is the per-token [lower, upper] of a bound rule.

    Takes exactly GRPOTrainer's arguments; ``args`` must be a `BandPOConfig`. Every training step and
    loss call checks that TRL applied the bounds (`TRLCompatibilityError` if not; see the module doc).
    """

    _loss_capture: TRLLossCapture | None = None
    """Set while TRL's `_compute_loss` runs under BandPO's epsilons."""
    _bounded_loss_calls: int = 0
    """Entries into `_compute_loss`, where the bounds are set."""
    epsilon_low: Tensor | float
    epsilon_high: Tensor | float
    """GRPOTrainer's clip margins (set by TRL): floats, per-token tensors while `_trl_loss_with` runs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, BandPOConfig):
            raise TypeError(f"BandPOTrainer needs args=BandPOConfig(...), got {type(self.args).__name__}")
        self.bound_rule = self.args.bound_rule()
        vllm_is = bool(self.use_vllm and self.vllm_importance_sampling_correction)
        if never_off_policy(self.args, vllm_is):
            logger.warning(
                "\n%s\nBandPO: this configuration never updates off-policy (gradient_accumulation_steps=%d is a "
                "multiple of steps_per_generation=%d x num_iterations=%d), so the ratio is always 1 and the "
                "bounds of bandpo_clip_method=%r NEVER BIND: every clipping rule trains identically. Set "
                "num_iterations >= 2 or steps_per_generation > gradient_accumulation_steps.\n%s",
                "!" * 100,
                self.args.gradient_accumulation_steps,
                self.args.steps_per_generation,
                self.args.num_iterations,
                self.args.bandpo_clip_method,
                "!" * 100,
            )

    def _incompatible(self, what: str, verdict: str = "did not apply") -> TRLCompatibilityError:
        """The error for a loss where TRL did not (visibly) apply the bounds."""
        return TRLCompatibilityError(
            f"BandPOTrainer: TRL {trl.__version__} {verdict} the per-token ratio bounds of bandpo_clip_method="
            f"{self.args.bandpo_clip_method!r}: {what}. Training stopped rather than continue with a clip BandPO did "
            f"not set. bandpo.integrations.trl supports TRL {SUPPORTED_TRL} (pip install 'trl{SUPPORTED_TRL}')."
        )

    # --- no loss without the bounds: every loss goes through _compute_loss ---------------------------

    @contextmanager
    def _requiring_bounded_loss(self, entry: str) -> Iterator[None]:
        """TRLCompatibilityError if the block (TRL's ``entry``) ends without entering `_compute_loss`."""
        calls_before = self._bounded_loss_calls
        yield
        if self._bounded_loss_calls == calls_before:
            if self.args.use_liger_kernel and hasattr(self, "compute_liger_loss"):
                cause = (
                    "with use_liger_kernel=True this TRL computes the loss in compute_liger_loss, Liger's fused GRPO "
                    "loss with the scalar epsilon / epsilon_high; set use_liger_kernel=False, or use TRL >= 1.14, "
                    "whose Liger path goes through _compute_loss"
                )
            else:
                cause = "it took a loss path that bandpo does not know"
            raise self._incompatible(
                f"GRPOTrainer.{entry} computed a loss without calling GRPOTrainer._compute_loss, where BandPOTrainer "
                f"sets the bounds ({cause})"
            )

    def training_step(self, model, inputs, num_items_in_batch=None):
        """TRL's training step; TRLCompatibilityError (after its backward, before any optimizer step) if
        no loss of the step went through `_compute_loss`."""
        with self._requiring_bounded_loss("training_step"):
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's ``compute_loss`` (training and evaluation); TRLCompatibilityError, before any backward, if
        it did not go through `_compute_loss`."""
        with self._requiring_bounded_loss("compute_loss"):
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    # --- the bounds, set for one call of TRL's _compute_loss and audited after it ------------------

    def _trl_clip_metric_names(self) -> tuple[str, ...]:
        return (TRL_CISPO_METRIC,) if self.loss_type in TRUNCATING_LOSS_TYPES else TRL_CLIP_METRICS

    @contextmanager
    def _trl_loss_with(self, epsilons: Epsilons, mode: str) -> Iterator[TRLLossCapture]:
        """Sets TRL's ``epsilon_low`` / ``epsilon_high`` to ``epsilons`` and records the log-probabilities
        TRL computes, for one call of TRL's ``_compute_loss``; the scalars are restored even on error."""
        scalars = Epsilons(self.epsilon_low, self.epsilon_high)
        capture = TRLLossCapture(
            epsilons=epsilons,
            metric_lengths_before={name: len(self._metrics[mode][name]) for name in self._trl_clip_metric_names()},
        )
        self.epsilon_low, self.epsilon_high = epsilons
        self._loss_capture = capture
        try:
            yield capture
        finally:
            self.epsilon_low, self.epsilon_high = scalars
            self._loss_capture = None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        """TRL's method; inside `_compute_loss` it also records the log-probs (and counts the calls)."""
        per_token_logps, entropies, *rest = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._loss_capture is not None:
            self._loss_capture.record_log_probs(per_token_logps)
        return (per_token_logps, entropies, *rest)

    def _compute_loss(self, model, inputs):
        """TRL's loss with epsilon_low / epsilon_high set to the batch's per-token bounds, then audited."""
        self._bounded_loss_calls += 1
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        old_log_probs = inputs.get("old_per_token_logps")
        token_level = self.importance_sampling_level == "token"
        epsilons = Epsilons(self.epsilon_low, self.epsilon_high)
        bounds = None
        if old_log_probs is not None and token_level:
            bounds = bounds_on_valid_tokens(self.bound_rule, old_log_probs, mask)
            epsilons = epsilons_for_loss_type(self.loss_type, bounds, epsilons)
        mode = "train" if self.model.training else "eval"
        with self._trl_loss_with(epsilons, mode) as capture:
            loss = super()._compute_loss(model, inputs)
        if capture.log_prob_calls != 1 or capture.log_probs is None:  # one call records them
            raise self._incompatible(
                f"its loss computed the policy log-probabilities {capture.log_prob_calls} time(s) through "
                "_get_per_token_logps_and_entropies (expected exactly once), so the ratio it clipped is not the "
                "one BandPO bounded and checked"
            )
        if token_level:
            log_probs = capture.log_probs
            if old_log_probs is None:  # on-policy: TRL uses the current log-probs, the ratio is 1
                old_log_probs = log_probs
            if bounds is None:  # None exactly when old_log_probs was
                bounds = bounds_on_valid_tokens(self.bound_rule, old_log_probs, mask)
            trl_logged = self._trl_logged_clip_shares(capture, mode)
            self._check_and_log(
                capture, log_probs, old_log_probs, bounds, trl_logged, inputs["advantages"], mask, mode
            )
        return loss

    def _trl_logged_clip_shares(self, capture: TRLLossCapture, mode: str) -> dict[str, float]:
        """The one value TRL logged for each of its clip metrics during the call (TRLCompatibilityError otherwise)."""
        logged = {}
        for name, length_before in capture.metric_lengths_before.items():
            values = self._metrics[mode][name]
            if len(values) != length_before + 1:
                raise self._incompatible(
                    f"its loss logged {len(values) - length_before} value(s) of {name} (expected exactly one), so "
                    "whether its clamp used the per-token epsilon_low / epsilon_high cannot be checked",
                    verdict="gave no way to check that it applied",
                )
            logged[name] = values[-1]
        return logged

    def _sum_over_processes(self, groups: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, float]]:
        """Every named 0-d tensor of every group summed over processes, in one collective."""
        keys = [(group, name) for group, values in groups.items() for name in values]
        stacked = torch.stack([groups[group][name].float() for group, name in keys])
        totals = self.accelerator.reduce(stacked, reduction="sum").tolist()
        summed: dict[str, dict[str, float]] = {group: {} for group in groups}
        for (group, name), total in zip(keys, totals, strict=True):
            summed[group][name] = total
        return summed

    @torch.no_grad()
    def _check_and_log(
        self,
        capture: TRLLossCapture,
        log_probs: Tensor,
        old_log_probs: Tensor,
        bounds: RatioBounds,
        trl_logged: dict[str, float],
        advantages: Tensor,
        mask: Tensor,
        mode: str,
    ) -> None:
        """Checks TRL's clip shares against the counts of the epsilons set (`trl_clip_counts`; all processes
        reach the same verdict), then logs BandPO's extra diagnostics (`bandpo.metrics.clip_metrics`), both
        in one reduction."""
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        mask = mask.float()
        ratio = torch.exp(log_probs - old_log_probs)
        expected = trl_clip_counts(self.loss_type, ratio, advantages, capture.epsilons, self.args.delta, mask)
        local = clip_metrics(
            ratio=ratio, lower=bounds.lower, upper=bounds.upper, advantages=advantages.expand_as(ratio),
            old_log_probs=old_log_probs, log_probs=log_probs, mask=mask,
        )
        diagnostics = {name: value for name, value in local.items() if name not in TRL_CLIP_METRICS}
        weights = reduce_weights(local)
        # Means become sums weighted by their group's count, counts stay sums: one reduction for all.
        weighted = {
            name: value if (weight := weights[name]) is None else value * weight for name, value in diagnostics.items()
        }
        totals = self._sum_over_processes({"trl_counts": expected, "diagnostics": weighted})
        summed = totals["diagnostics"]
        self._check_trl_counts(trl_logged, totals["trl_counts"], summed["tokens/valid"])
        for name in diagnostics:
            denominator = DENOMINATORS.get(name, "tokens/valid")
            value = summed[name] if weights[name] is None else summed[name] / max(summed[denominator], 1.0)
            self._metrics[mode][name].append(value)

    def _check_trl_counts(self, trl_logged: dict[str, float], expected_counts: dict[str, float], tokens: float) -> None:
        """TRLCompatibilityError unless each share TRL logged agrees with the expected count (`clip_counts_agree`)."""
        for name, logged in trl_logged.items():
            if not clip_counts_agree(logged, expected_counts[name], tokens):
                raise self._incompatible(
                    f"TRL logged {name} = {logged:.6g} ({logged * max(tokens, 1.0):.1f} of {tokens:.0f} valid tokens) "
                    f"for this batch, but the per-token epsilon_low / epsilon_high BandPOTrainer set give "
                    f"{expected_counts[name] / max(tokens, 1.0):.6g} ({expected_counts[name]:.0f} tokens): its clamp "
                    "used other bounds"
                )
