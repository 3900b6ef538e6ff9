"""BandPO for TRL 1.16: :class:`BandPOConfig` and :class:`BandPOTrainer`.

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

Loss types: ``grpo``, ``bnpo``, ``dr_grpo``, ``dapo`` and ``luspo`` clip the ratio on both sides;
``cispo`` truncates the importance weight at ``epsilon_high`` itself, which becomes ``upper``
(band / dcpo only). ``sapo`` and ``vespo`` do not clip the ratio and are rejected.

BandPO's radius is ``bandpo_delta``: the name ``delta`` already belongs to GRPOConfig (TRL's
two-sided clip, i.e. the dual-clip constant ``c`` of the paper, which the published runs set to 10).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer

from bandpo.band import DELTA_RANGE
from bandpo.checks import check_number
from bandpo.divergences import DIVERGENCES
from bandpo.metrics import clip_metrics
from bandpo.rules import METHODS, BoundRule, make_rule

logger = logging.getLogger(__name__)

TWO_SIDED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
"""TRL loss types that clip the ratio to [1 - epsilon_low, 1 + epsilon_high]."""
TRUNCATING_LOSS_TYPES = ("cispo",)
"""TRL loss types that truncate the (detached) importance weight at epsilon_high."""
PER_TOKEN_METHODS = ("band", "dcpo")
"""Rules whose bounds depend on the token's old probability."""
TRL_CLIP_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
"""Logged by TRL itself (against the per-token bounds); not logged twice."""
SUMMED_METRIC_PREFIXES = ("tokens/", "clipped/")
"""Token counts: summed over processes. Every other extra is a token-weighted mean."""


@dataclass
class BandPOConfig(GRPOConfig):
    r"""
    GRPOConfig plus the ratio-bound rule of BandPO.

    Parameters:
        clip_method (`str`, *optional*, defaults to `"band"`):
            Rule for the ratio interval: `"band"` (BandPO), `"clip"` (TRL's `[1 - epsilon, 1 + epsilon_high]`),
            `"clip-higher"` (the same with `epsilon_high` defaulting to 0.28, DAPO) or `"dcpo"`.
        divergence (`str`, *optional*, defaults to `"kl"`):
            f-divergence of Band's trust region: `"kl"`, `"tv"`, `"chi2"`, `"reverse_kl"` or `"hellinger"`.
        bandpo_delta (`float`, *optional*, defaults to `0.05`):
            Radius of Band's trust region (> 0). Not GRPOConfig's `delta`, which is TRL's two-sided clip.
        upper_max (`float` or `None`, *optional*, defaults to `10.0`):
            Cap on the upper ratio bound of `"band"` and `"dcpo"` (>= 1); `None` for no cap.
        dcpo_eps_low (`float`, *optional*, defaults to `0.16`):
            DCPO's lower margin.
        dcpo_eps_high (`float`, *optional*, defaults to `0.20`):
            DCPO's upper margin.
    """

    clip_method: str = field(
        default="band",
        metadata={"help": "Ratio-bound rule.", "choices": list(METHODS)},
    )
    divergence: str = field(
        default="kl",
        metadata={"help": "f-divergence of Band's trust region.", "choices": list(DIVERGENCES)},
    )
    bandpo_delta: float = field(
        default=0.05,
        metadata={"help": "Radius of Band's trust region (> 0). GRPOConfig's `delta` is TRL's two-sided clip."},
    )
    upper_max: float | None = field(
        default=10.0,
        metadata={"help": "Cap on the upper ratio bound of band and dcpo (>= 1); None for no cap."},
    )
    dcpo_eps_low: float = field(default=0.16, metadata={"help": "DCPO's lower margin."})
    dcpo_eps_high: float = field(default=0.20, metadata={"help": "DCPO's upper margin."})

    def __post_init__(self) -> None:
        if self.clip_method not in METHODS:
            raise ValueError(f"clip_method must be one of {', '.join(METHODS)}, got {self.clip_method!r}")
        if self.clip_method == "clip-higher" and self.epsilon_high is None:
            self.epsilon_high = 0.28
        super().__post_init__()
        clipping = TWO_SIDED_LOSS_TYPES + TRUNCATING_LOSS_TYPES
        if self.loss_type not in clipping:
            raise ValueError(
                f"loss_type {self.loss_type!r} does not clip the ratio, so BandPOConfig cannot bound it; "
                f"loss_type must be one of {', '.join(clipping)} (use trl.GRPOTrainer for the others)"
            )
        if self.loss_type in TRUNCATING_LOSS_TYPES and self.clip_method not in PER_TOKEN_METHODS:
            raise ValueError(
                f"loss_type {self.loss_type!r} truncates at epsilon_high itself; with clip_method "
                f"{self.clip_method!r} use trl.GRPOTrainer, or set clip_method to one of {', '.join(PER_TOKEN_METHODS)}"
            )
        if self.clip_method in PER_TOKEN_METHODS and self.importance_sampling_level != "token":
            raise ValueError(
                f"clip_method {self.clip_method!r} bounds each token by its own probability and needs "
                f"importance_sampling_level='token', got {self.importance_sampling_level!r}"
            )
        self.bound_rule()  # validates divergence, bandpo_delta, upper_max and the margins

    def bound_rule(self) -> BoundRule:
        """The rule named by ``clip_method`` with this config's parameters."""
        if self.clip_method == "band":
            if self.divergence not in DIVERGENCES:
                raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
            check_number("bandpo_delta", self.bandpo_delta, low=DELTA_RANGE[0], high=DELTA_RANGE[1])
        if self.clip_method == "dcpo":
            eps_low, eps_high = self.dcpo_eps_low, self.dcpo_eps_high
        else:
            eps_low, eps_high = self.epsilon, self.epsilon_high if self.epsilon_high is not None else self.epsilon
        return make_rule(
            self.clip_method,
            divergence=self.divergence,
            delta=self.bandpo_delta,
            upper_max=self.upper_max,
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


class BandPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose ratio clip interval is the per-token [lower, upper] of a bound rule.

    Takes exactly GRPOTrainer's arguments; ``args`` must be a :class:`BandPOConfig`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, BandPOConfig):
            raise TypeError(f"BandPOTrainer needs args=BandPOConfig(...), got {type(self.args).__name__}")
        self.bound_rule = self.args.bound_rule()
        self._captured_log_probs: Tensor | None = None
        self._capture_log_probs = False
        vllm_is = bool(self.use_vllm and self.vllm_importance_sampling_correction)
        if never_off_policy(self.args, vllm_is):
            logger.warning(
                "\n%s\nBandPO: this configuration never updates off-policy (gradient_accumulation_steps=%d is a "
                "multiple of steps_per_generation=%d x num_iterations=%d), so the ratio is always 1 and the "
                "bounds of clip_method=%r NEVER BIND: every clipping rule trains identically. Set "
                "num_iterations >= 2 or steps_per_generation > gradient_accumulation_steps.\n%s",
                "!" * 100,
                self.args.gradient_accumulation_steps,
                self.args.steps_per_generation,
                self.args.num_iterations,
                self.args.clip_method,
                "!" * 100,
            )

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        """TRL's method; inside :meth:`_compute_loss` it also keeps the log-probs for the diagnostics."""
        per_token_logps, entropies, *rest = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._capture_log_probs:
            self._captured_log_probs = per_token_logps.detach()
        return (per_token_logps, entropies, *rest)

    def _compute_loss(self, model, inputs):
        """TRL's loss with epsilon_low / epsilon_high set to the batch's per-token bounds."""
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
        self._capture_log_probs = True
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self.epsilon_low, self.epsilon_high = scalar_epsilons
            self._capture_log_probs = False
        log_probs, self._captured_log_probs = self._captured_log_probs, None
        if log_probs is not None and self.importance_sampling_level == "token":
            if old_log_probs is None:  # on-policy: TRL uses the current log-probs, the ratio is 1
                old_log_probs = log_probs
                bounds = bounds_on_valid_tokens(self.bound_rule, old_log_probs, mask)
            self._log_bound_metrics(log_probs, old_log_probs, bounds, inputs["advantages"], mask)
        return loss

    @torch.no_grad()
    def _log_bound_metrics(
        self, log_probs: Tensor, old_log_probs: Tensor, bounds: tuple[Tensor, Tensor], advantages: Tensor, mask: Tensor
    ) -> None:
        """BandPO's extra diagnostics (:func:`bandpo.metrics.clip_metrics`), reduced over processes."""
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        mask = mask.float()
        ratio = torch.exp(log_probs - old_log_probs)
        lower, upper = bounds
        local = clip_metrics(
            ratio=ratio, lower=lower, upper=upper, advantages=advantages.expand_as(ratio),
            old_log_probs=old_log_probs, log_probs=log_probs, mask=mask,
        )
        names = [name for name in local if name not in TRL_CLIP_METRICS]
        token_count = mask.sum()
        clipped_count = local["clip_ratio/region_mean"] * token_count.clamp_min(1.0)
        # Means become sums (weighted by this process's token or clipped-token count) for one reduction.
        weights = {"clip_ratio/low_p_high_share": clipped_count}
        sums = torch.stack(
            [token_count, clipped_count]
            + [
                local[name] * (1.0 if name.startswith(SUMMED_METRIC_PREFIXES) else weights.get(name, token_count))
                for name in names
            ]
        )
        totals = self.accelerator.reduce(sums, reduction="sum").tolist()
        total_tokens, total_clipped = max(totals[0], 1.0), max(totals[1], 1.0)
        mode = "train" if self.model.training else "eval"
        for name, total in zip(names, totals[2:]):
            if name.startswith(SUMMED_METRIC_PREFIXES):
                value = total
            elif name == "clip_ratio/low_p_high_share":
                value = total / total_clipped
            else:
                value = total / total_tokens
            self._metrics[mode][name].append(value)
