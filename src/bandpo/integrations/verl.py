"""BandPO policy losses for verl 0.9, registered through verl's own ``register_policy_loss``.

Importing this module registers three ``actor_rollout_ref.actor.policy_loss.loss_mode`` values:

    bandpo        Band bounds (f-divergence trust region; published defaults kl, delta 0.05, cap 10)
    bandpo_clip   PPO/GRPO fixed interval [1 - clip_ratio_low, 1 + clip_ratio_high]
                  (GRPO 0.2 / 0.2, Clip-Higher 0.2 / 0.28) with BandPO's diagnostics
    bandpo_dcpo   DCPO's adaptive interval from clip_ratio_low / clip_ratio_high

All three take verl's dual clip ``actor.clip_ratio_c``, its ``loss_agg_mode`` (aggregated by verl's own
``agg_loss`` with ``actor.global_batch_info``, so the loss does not depend on data-parallel sharding or
micro-batching) and its ``rollout_is_weights``.

Two overrides train with BandPO (the module must be imported inside verl's Ray workers, which verl does
for ``model.external_lib``; ``VERL_USE_EXTERNAL_MODULES=bandpo.integrations.verl`` works as well)::

    actor_rollout_ref.model.external_lib=bandpo.integrations.verl
    actor_rollout_ref.actor.policy_loss.loss_mode=bandpo

BandPO's own parameters are fields of :class:`BandPOPolicyLossConfig`, a subclass of verl's
``PolicyLossConfig``; select it with ``_target_`` and set the fields with ``+``::

    actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPOPolicyLossConfig
    +actor_rollout_ref.actor.policy_loss.bandpo_delta=0.1

A misspelt field fails when verl builds the config (the dataclass has no such argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss
from verl.workers.config import PolicyLossConfig

from bandpo.checks import check_number
from bandpo.loss import PolicyTerms, policy_terms
from bandpo.metrics import metrics_to_floats
from bandpo.rules import DCPO, Band, BoundRule, FixedClip

BANDPO_LOSS_MODES = ("bandpo", "bandpo_clip", "bandpo_dcpo")

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
        bandpo_divergence: the f-divergence of the trust region (kl | tv | chi2 | reverse_kl | hellinger).
        bandpo_delta: its radius.
        bandpo_upper_max: cap on the upper ratio bound (also DCPO's cap); null for none.
    """

    bandpo_divergence: str = "kl"
    bandpo_delta: float = 0.05
    bandpo_upper_max: Optional[float] = 10.0

    def __post_init__(self) -> None:
        Band(divergence=self.bandpo_divergence, delta=self.bandpo_delta, upper_max=self.bandpo_upper_max)


def _policy_loss_parameter(config: Any, name: str) -> Any:
    """``config.policy_loss.<name>``, or its :class:`BandPOPolicyLossConfig` default when absent."""
    return config.policy_loss.get(name, getattr(BandPOPolicyLossConfig, name))


def _clip_ratios(config: Any) -> tuple[float, float]:
    """(clip_ratio_low, clip_ratio_high), each falling back to ``clip_ratio`` as verl's vanilla loss does."""
    low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
    high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
    return low, high


def bound_rule_from_config(loss_mode: str, config: Any) -> BoundRule:
    """The bound rule that ``loss_mode`` (one of :data:`BANDPO_LOSS_MODES`) reads from verl's actor config."""
    upper_max = _policy_loss_parameter(config, "bandpo_upper_max")
    if loss_mode == "bandpo":
        return Band(
            divergence=_policy_loss_parameter(config, "bandpo_divergence"),
            delta=_policy_loss_parameter(config, "bandpo_delta"),
            upper_max=upper_max,
        )
    eps_low, eps_high = _clip_ratios(config)
    if loss_mode == "bandpo_clip":
        return FixedClip(eps_low=eps_low, eps_high=eps_high)
    if loss_mode == "bandpo_dcpo":
        return DCPO(eps_low=eps_low, eps_high=eps_high, upper_max=upper_max)
    raise ValueError(f"loss_mode must be one of {', '.join(BANDPO_LOSS_MODES)}, got {loss_mode!r}")


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


def compute_bandpo_policy_loss(
    loss_mode: str,
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str,
    config: Any,
    rollout_is_weights: Tensor | None,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate of ``loss_mode``'s rule, aggregated as verl aggregates its own losses."""
    if config is None:
        raise ValueError("config must be verl's actor config (ActorConfig), got None")
    rule = bound_rule_from_config(loss_mode, config)
    dual_clip = _dual_clip_from_config(config)
    terms = policy_terms(log_prob, old_log_prob, advantages, response_mask, clip=rule, dual_clip=dual_clip)
    loss_matrix = terms.loss_matrix
    if rollout_is_weights is not None:
        loss_matrix = loss_matrix * rollout_is_weights
    loss = agg_loss(
        loss_mat=loss_matrix, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
    )
    return loss, verl_metrics(terms)


def _make_verl_policy_loss(loss_mode: str) -> Callable[..., tuple[Tensor, dict[str, float]]]:
    """A policy loss with exactly the keyword signature verl calls, bound to ``loss_mode``."""

    def policy_loss(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        return compute_bandpo_policy_loss(
            loss_mode, old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights
        )

    policy_loss.__name__ = f"compute_policy_loss_{loss_mode}"
    policy_loss.__qualname__ = policy_loss.__name__
    policy_loss.__doc__ = f"verl policy loss ``{loss_mode}``: see :func:`compute_bandpo_policy_loss`."
    return policy_loss


compute_policy_loss_bandpo = register_policy_loss("bandpo")(_make_verl_policy_loss("bandpo"))
compute_policy_loss_bandpo_clip = register_policy_loss("bandpo_clip")(_make_verl_policy_loss("bandpo_clip"))
compute_policy_loss_bandpo_dcpo = register_policy_loss("bandpo_dcpo")(_make_verl_policy_loss("bandpo_dcpo"))
