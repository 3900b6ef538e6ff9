"""BandPO for TRL 1.16: `BandPOConfig` and `BandPOTrainer`.

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

This relies on private TRL code, so it is guarded twice:

- at import, the installed TRL must be in `SUPPORTED_TRL` (ImportError otherwise;
  ``BANDPO_ALLOW_UNTESTED_TRL=1`` downgrades it to a warning);
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
from dataclasses import dataclass, field

import torch
import trl
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from torch import Tensor

from bandpo.band import DELTA_RANGE
from bandpo.checks import check_number
from bandpo.divergences import DIVERGENCES
from bandpo.metrics import DENOMINATORS, clip_metrics, reduce_weights
from bandpo.rules import CLIP_METHODS, BoundRule, check_clip_method, check_eps_low, make_rule

logger = logging.getLogger(__name__)

SUPPORTED_TRL = ">=1.16,<1.17"
"""TRL releases whose ``GRPOTrainer._compute_loss`` this module is tested against (the ``trl`` extra
of pyproject.toml pins the same range)."""
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
PER_TOKEN_METHODS = ("band", "band-relax", "band-upper", "band-lower", "dcpo")
"""Rules whose bounds depend on the token's old probability."""
TRL_CLIP_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
"""Logged by TRL itself (against the per-token bounds); not logged twice."""
TRL_CISPO_METRIC = "cispo_clip_ratio"
"""TRL's share of truncated tokens for loss_type cispo."""
EPSILON_HIGH_DEFAULT = 0.28
"""epsilon_high of the `FIXED_HIGH_METHODS` when GRPOConfig's epsilon_high is unset."""
FIXED_HIGH_METHODS = ("clip-higher", "band-relax", "band-upper", "band-lower")
"""Rules whose fixed margins are clip-higher's (DAPO's 0.2 / 0.28) by default."""
GUARD_TOLERANCE = 2.0**-20
"""Relative slack (per token of the batch) of the per-call check, above half a token: float32 rounding
of TRL's logged mean is 2^-24 relative."""


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
        default="kl",
        metadata={"help": "f-divergence of the band's trust region.", "choices": list(DIVERGENCES)},
    )
    bandpo_delta: float = field(
        default=0.05,
        metadata={"help": "Radius of the band's trust region (> 0). GRPOConfig's `delta` is TRL's two-sided clip."},
    )
    bandpo_upper_max: float | None = field(
        default=10.0,
        metadata={"help": "Cap on the upper ratio bound of band, band-relax and dcpo (>= 1); None for no cap."},
    )
    bandpo_dcpo_eps_low: float = field(default=0.16, metadata={"help": "DCPO's lower margin."})
    bandpo_dcpo_eps_high: float = field(default=0.20, metadata={"help": "DCPO's upper margin."})

    def __post_init__(self) -> None:
        check_clip_method(self.bandpo_clip_method, "bandpo_clip_method")
        if self.bandpo_clip_method in FIXED_HIGH_METHODS and self.epsilon_high is None:
            self.epsilon_high = EPSILON_HIGH_DEFAULT
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
        self.bound_rule()  # validates the rule's fields, naming them

    def fixed_margins(self) -> tuple[float, float]:
        """(epsilon, epsilon_high or epsilon): the margins of clip, clip-higher and band-relax."""
        return self.epsilon, self.epsilon if self.epsilon_high is None else self.epsilon_high

    def bound_rule(self) -> BoundRule:
        """The rule named by ``bandpo_clip_method`` with this config's parameters.

        ValueError names the config field that is out of range.
        """
        clip_method = self.bandpo_clip_method
        if clip_method.startswith("band"):
            if self.bandpo_divergence not in DIVERGENCES:
                raise ValueError(
                    f"bandpo_divergence must be one of {', '.join(DIVERGENCES)}, got {self.bandpo_divergence!r}"
                )
            check_number("bandpo_delta", self.bandpo_delta, low=DELTA_RANGE[0], high=DELTA_RANGE[1])
        if clip_method in PER_TOKEN_METHODS:
            check_number("bandpo_upper_max", self.bandpo_upper_max, low=1.0, allow_none=True, allow_infinity=True)
        if clip_method == "dcpo":
            eps_low = check_number("bandpo_dcpo_eps_low", self.bandpo_dcpo_eps_low, low=0.0)
            eps_high = check_number("bandpo_dcpo_eps_high", self.bandpo_dcpo_eps_high, low=0.0)
        else:
            eps_low, eps_high = self.fixed_margins()
            if clip_method != "band":
                check_eps_low("epsilon", eps_low)
                check_number("epsilon_high", eps_high, low=0.0)
        return make_rule(
            clip_method,
            divergence=self.bandpo_divergence,
            delta=self.bandpo_delta,
            upper_max=self.bandpo_upper_max,
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


def bounds_on_valid_tokens(rule: BoundRule, old_log_probs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The rule's (lower, upper) on valid tokens; 1 on padding (masked out of every loss)."""
    valid = mask > 0
    lower = torch.ones_like(old_log_probs)
    upper = torch.ones_like(old_log_probs)
    valid_lower, valid_upper = rule.bounds(old_log_probs[valid].detach())
    lower[valid] = valid_lower.to(lower.dtype)
    upper[valid] = valid_upper.to(upper.dtype)
    return lower, upper


def epsilons_for_loss_type(loss_type: str, lower: Tensor, upper: Tensor) -> tuple[Tensor | None, Tensor]:
    """(epsilon_low, epsilon_high) that make TRL's clip of ``loss_type`` equal [lower, upper].

    Two-sided types clamp to [1 - epsilon_low, 1 + epsilon_high]; cispo truncates at epsilon_high
    (and ignores epsilon_low, returned as None).
    """
    if loss_type in TRUNCATING_LOSS_TYPES:
        return None, upper
    return 1.0 - lower, upper - 1.0


def expected_trl_clip_flags(
    loss_type: str,
    ratio: Tensor,
    advantages: Tensor,
    epsilon_low: Tensor | float,
    epsilon_high: Tensor | float,
    dual_clip: float | None,
) -> dict[str, Tensor]:
    """The per-token flags TRL 1.16's ``_compute_loss`` counts into its clip metrics, had it used these epsilons.

    The same expressions as TRL (so the same floating-point thresholds, ``1 - epsilon_low`` and
    ``1 + epsilon_high``): two-sided types count the ratio after the dual clip ``min(r, delta)``;
    cispo counts ``r > epsilon_high`` with a positive advantage.
    """
    if loss_type in TRUNCATING_LOSS_TYPES:
        return {TRL_CISPO_METRIC: (ratio > epsilon_high) & (advantages > 0)}
    if dual_clip is not None:
        ratio = torch.clamp(ratio, max=dual_clip)
    low = (ratio < 1 - epsilon_low) & (advantages < 0)
    high = (ratio > 1 + epsilon_high) & (advantages > 0)
    return dict(zip(TRL_CLIP_METRICS, (low, high, low | high)))


class BandPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose ratio clip interval is the per-token [lower, upper] of a bound rule.

    Takes exactly GRPOTrainer's arguments; ``args`` must be a `BandPOConfig`. Every loss call
    checks that TRL applied the bounds (`TRLCompatibilityError` if not; see the module doc).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, BandPOConfig):
            raise TypeError(f"BandPOTrainer needs args=BandPOConfig(...), got {type(self.args).__name__}")
        self.bound_rule = self.args.bound_rule()
        self._captured_log_probs: Tensor | None = None
        self._capture_log_probs = False
        self._log_prob_calls = 0
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

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        """TRL's method; inside `_compute_loss` it also keeps the log-probs (and counts the calls)."""
        per_token_logps, entropies, *rest = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._capture_log_probs:
            self._log_prob_calls += 1
            self._captured_log_probs = per_token_logps.detach()
        return (per_token_logps, entropies, *rest)

    def _incompatible(self, what: str, verdict: str = "did not apply") -> TRLCompatibilityError:
        """The error for a loss call where TRL did not (visibly) apply the bounds."""
        return TRLCompatibilityError(
            f"BandPOTrainer: TRL {trl.__version__} {verdict} the per-token ratio bounds of bandpo_clip_method="
            f"{self.args.bandpo_clip_method!r}: {what}. Training stopped rather than continue with a clip BandPO did "
            f"not set. bandpo.integrations.trl supports TRL {SUPPORTED_TRL} (pip install 'trl{SUPPORTED_TRL}')."
        )

    def _trl_clip_metric_names(self) -> tuple[str, ...]:
        return (TRL_CISPO_METRIC,) if self.loss_type in TRUNCATING_LOSS_TYPES else TRL_CLIP_METRICS

    def _compute_loss(self, model, inputs):
        """TRL's loss with epsilon_low / epsilon_high set to the batch's per-token bounds, then checked."""
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        old_log_probs = inputs.get("old_per_token_logps")
        scalar_epsilons = (self.epsilon_low, self.epsilon_high)
        bounds = None
        if old_log_probs is not None and self.importance_sampling_level == "token":
            bounds = bounds_on_valid_tokens(self.bound_rule, old_log_probs, mask)
            epsilon_low, self.epsilon_high = epsilons_for_loss_type(self.loss_type, *bounds)
            if epsilon_low is not None:
                self.epsilon_low = epsilon_low
        applied = (self.epsilon_low, self.epsilon_high)  # what TRL's clamp and clip counts must use
        mode = "train" if self.model.training else "eval"
        logged_before = {name: len(self._metrics[mode][name]) for name in self._trl_clip_metric_names()}
        self._log_prob_calls = 0
        self._captured_log_probs = None
        self._capture_log_probs = True
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self.epsilon_low, self.epsilon_high = scalar_epsilons
            self._capture_log_probs = False
        log_probs, self._captured_log_probs = self._captured_log_probs, None
        if self._log_prob_calls != 1:
            raise self._incompatible(
                f"its loss computed the policy log-probabilities {self._log_prob_calls} time(s) through "
                "_get_per_token_logps_and_entropies (expected exactly once), so the ratio it clipped is not the "
                "one BandPO bounded and checked"
            )
        if self.importance_sampling_level == "token":
            if old_log_probs is None:  # on-policy: TRL uses the current log-probs, the ratio is 1
                old_log_probs = log_probs
                bounds = bounds_on_valid_tokens(self.bound_rule, old_log_probs, mask)
            trl_logged = {}
            for name, before in logged_before.items():
                values = self._metrics[mode][name]
                if len(values) != before + 1:
                    raise self._incompatible(
                        f"its loss logged {len(values) - before} value(s) of {name} (expected exactly one), so "
                        "whether its clamp used the per-token epsilon_low / epsilon_high cannot be checked",
                        verdict="gave no way to check that it applied",
                    )
                trl_logged[name] = values[-1]
            self._check_and_log(log_probs, old_log_probs, bounds, applied, trl_logged, inputs["advantages"], mask, mode)
        return loss

    @torch.no_grad()
    def _check_and_log(
        self,
        log_probs: Tensor,
        old_log_probs: Tensor,
        bounds: tuple[Tensor, Tensor],
        applied: tuple[Tensor | float, Tensor | float],
        trl_logged: dict[str, float],
        advantages: Tensor,
        mask: Tensor,
        mode: str,
    ) -> None:
        """Checks TRL's clip counts against the epsilons set (all processes reach the same verdict), then
        logs BandPO's extra diagnostics (`bandpo.metrics.clip_metrics`), both in one reduction."""
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        mask = mask.float()
        ratio = torch.exp(log_probs - old_log_probs)
        expected = expected_trl_clip_flags(self.loss_type, ratio, advantages, *applied, self.args.delta)
        lower, upper = bounds
        local = clip_metrics(
            ratio=ratio, lower=lower, upper=upper, advantages=advantages.expand_as(ratio),
            old_log_probs=old_log_probs, log_probs=log_probs, mask=mask,
        )
        names = [name for name in local if name not in TRL_CLIP_METRICS]
        weights = reduce_weights(local)
        # Means become sums weighted by their group's count, counts stay sums: one reduction for all.
        sums = torch.stack(
            [local["tokens/valid"]]
            + [(expected[name].float() * mask).sum() for name in trl_logged]
            + [local[name] if weights[name] is None else local[name] * weights[name] for name in names]
        )
        totals = self.accelerator.reduce(sums, reduction="sum").tolist()
        self._check_trl_counts(trl_logged, dict(zip(trl_logged, totals[1 : 1 + len(trl_logged)], strict=True)), totals[0])
        reduced = dict(zip(names, totals[1 + len(trl_logged) :], strict=True))
        for name in names:
            denominator = DENOMINATORS.get(name, "tokens/valid")
            value = reduced[name] if weights[name] is None else reduced[name] / max(reduced[denominator], 1.0)
            self._metrics[mode][name].append(value)

    def _check_trl_counts(self, trl_logged: dict[str, float], expected_counts: dict[str, float], tokens: float) -> None:
        """TRLCompatibilityError unless each mean TRL logged equals the expected count over ``tokens`` valid tokens.

        Both sides are the same expressions on the same tensors, reduced the same way, so they agree up
        to float32 rounding of TRL's mean; one token counted differently is a difference of 1.
        """
        tolerance = 0.5 + GUARD_TOLERANCE * tokens
        for name, logged in trl_logged.items():
            trl_count = logged * max(tokens, 1.0)
            if not abs(trl_count - expected_counts[name]) <= tolerance:  # also catches NaN
                raise self._incompatible(
                    f"TRL logged {name} = {logged:.6g} ({trl_count:.1f} of {tokens:.0f} valid tokens) for this batch, "
                    f"but the per-token epsilon_low / epsilon_high BandPOTrainer set give "
                    f"{expected_counts[name] / max(tokens, 1.0):.6g} ({expected_counts[name]:.0f} tokens): its clamp "
                    "used other bounds"
                )
