"""BandPO policy losses for verl 0.9, registered through verl's own ``register_policy_loss``.

Importing this module registers one ``actor_rollout_ref.actor.policy_loss.loss_mode``, ``bandpo``; its
bound rule is the field ``bandpo_clip_method`` of `BandPOPolicyLossConfig`:

    band          Band bounds (f-divergence trust region; published defaults kl, delta 0.05, cap 10)
    band-relax    the band widened to contain [1 - clip_ratio_low, 1 + clip_ratio_high] (SPEC §9)
    clip          PPO/GRPO fixed interval [1 - clip_ratio_low, 1 + clip_ratio_high]
    clip-higher   the same rule (set clip_ratio_high = 0.28 for DAPO's Clip-Higher)
    dcpo          DCPO's adaptive interval from clip_ratio_low / clip_ratio_high

Every rule takes verl's dual clip ``actor.clip_ratio_c``, its ``loss_agg_mode`` (aggregated by verl's own
``agg_loss`` with ``actor.global_batch_info``, so the loss does not depend on data-parallel sharding or
micro-batching) and its ``rollout_is_weights``.

Two overrides train with BandPO (the module must be imported inside verl's Ray workers, which verl does
for ``model.external_lib``; ``VERL_USE_EXTERNAL_MODULES=bandpo.integrations.verl`` works as well)::

    actor_rollout_ref.model.external_lib=bandpo.integrations.verl
    actor_rollout_ref.actor.policy_loss.loss_mode=bandpo

BandPO's own parameters are fields of `BandPOPolicyLossConfig`, a subclass of verl's
``PolicyLossConfig``; select it with ``_target_`` and set the fields with ``+``::

    actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPOPolicyLossConfig
    +actor_rollout_ref.actor.policy_loss.bandpo_clip_method=band
    +actor_rollout_ref.actor.policy_loss.bandpo_delta=0.1

A misspelt field fails when verl builds the config (the dataclass has no such argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss
from verl.workers.config import PolicyLossConfig

from bandpo.checks import check_number
from bandpo.loss import PolicyTerms, policy_terms
from bandpo.metrics import metrics_to_floats
from bandpo.rules import Band, BoundRule, check_clip_method, make_rule

BANDPO_LOSS_MODE = "bandpo"
"""The ``policy_loss.loss_mode`` this module registers."""

VERL_METRIC_NAMES = {
    "clip_ratio/region_mean": "actor/pg_clipfrac",
    "clip_ratio/dual_clip_mean": "actor/pg_clipfrac_lower",
    "policy/ppo_kl": "actor/ppo_kl",
}
"""BandPO metrics that are what verl's vanilla loss logs under these names."""

BANDPO_METRIC_PREFIX = "actor/bandpo/"


@dataclass
class BandPOPolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus BandPO's parameters (defaults: the published runs).

    Args:
        bandpo_clip_method: the bound rule, one of `bandpo.rules.CLIP_METHODS` (band | band-relax |
            clip | clip-higher | dcpo); the fixed margins come from ``actor.clip_ratio_low/high``.
        bandpo_divergence: the f-divergence of the trust region (kl | tv | chi2 | reverse_kl | hellinger).
        bandpo_delta: its radius.
        bandpo_upper_max: cap on the upper ratio bound (also DCPO's cap); null for none.
    """

    bandpo_clip_method: str = "band"
    bandpo_divergence: str = "kl"
    bandpo_delta: float = 0.05
    bandpo_upper_max: Optional[float] = 10.0

    def __post_init__(self) -> None:
        check_clip_method(self.bandpo_clip_method, "bandpo_clip_method")
        Band(divergence=self.bandpo_divergence, delta=self.bandpo_delta, upper_max=self.bandpo_upper_max)


def _policy_loss_parameter(config: Any, name: str) -> Any:
    """``config.policy_loss.<name>``, or its `BandPOPolicyLossConfig` default when absent."""
    return config.policy_loss.get(name, getattr(BandPOPolicyLossConfig, name))


def _clip_ratios(config: Any) -> tuple[float, float]:
    """(clip_ratio_low, clip_ratio_high), each falling back to ``clip_ratio`` as verl's vanilla loss does."""
    low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
    high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
    return low, high


def bound_rule_from_config(config: Any) -> BoundRule:
    """The bound rule that ``policy_loss.bandpo_clip_method`` names, with its parameters from verl's actor config.

    Band parameters come from ``policy_loss.bandpo_*`` (absent fields: the published defaults), the
    margins of band-relax, clip, clip-higher and dcpo from ``clip_ratio_low`` / ``clip_ratio_high``.
    """
    clip_method = _policy_loss_parameter(config, "bandpo_clip_method")
    check_clip_method(clip_method, "bandpo_clip_method")
    eps_low, eps_high = _clip_ratios(config)
    return make_rule(
        clip_method,
        divergence=_policy_loss_parameter(config, "bandpo_divergence"),
        delta=_policy_loss_parameter(config, "bandpo_delta"),
        upper_max=_policy_loss_parameter(config, "bandpo_upper_max"),
        eps_low=eps_low,
        eps_high=eps_high,
    )


def _dual_clip_from_config(config: Any) -> float:
    """verl's dual-clip constant ``actor.clip_ratio_c`` (always on in verl), checked to be > 1."""
    return check_number("actor.clip_ratio_c", config.get("clip_ratio_c", 3.0), low=1.0, low_open=True)


def verl_metrics(terms: PolicyTerms) -> dict[str, float]:
    """BandPO's clip metrics under verl's names, plus ``actor/pg_clipfrac_lower`` (dual clip active).

    ``actor/pg_clipfrac`` is the share of valid tokens whose gradient the bounds cut,
    ``actor/pg_clipfrac_lower`` the share with A < 0 whose loss the dual clip caps, ``actor/ppo_kl`` the
    mean of log pi_old - log pi; the others appear as ``actor/bandpo/<bandpo name>``.
    """
    metrics = {VERL_METRIC_NAMES.get(name, BANDPO_METRIC_PREFIX + name): value for name, value in terms.metrics().items()}
    return metrics_to_floats(metrics)


@register_policy_loss(BANDPO_LOSS_MODE)
def compute_policy_loss_bandpo(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """verl policy loss ``bandpo``: the clipped surrogate of ``bandpo_clip_method``'s rule, aggregated as
    verl aggregates its own losses (the keyword signature verl calls)."""
    if config is None:
        raise ValueError("config must be verl's actor config (ActorConfig), got None")
    rule = bound_rule_from_config(config)
    dual_clip = _dual_clip_from_config(config)
    terms = policy_terms(log_prob, old_log_prob, advantages, response_mask, clip=rule, dual_clip=dual_clip)
    loss_matrix = terms.loss_matrix
    if rollout_is_weights is not None:
        loss_matrix = loss_matrix * rollout_is_weights
    loss = agg_loss(
        loss_mat=loss_matrix, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
    )
    return loss, verl_metrics(terms)
