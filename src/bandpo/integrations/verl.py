"""BandPO policy losses for verl 0.9, registered through verl's own ``register_policy_loss``.

Importing this module registers one ``actor_rollout_ref.actor.policy_loss.loss_mode``, ``bandpo``; its
bound rule is the field ``bandpo_clip_method`` of `BandPOPolicyLossConfig`:

    band          Band bounds (f-divergence trust region; published defaults kl, delta 0.05, cap 10)
    band-relax    the band widened to contain [1 - clip_ratio_low, 1 + clip_ratio_high] (SPEC §9)
    clip          PPO/GRPO fixed interval [1 - clip_ratio_low, 1 + clip_ratio_high]
    clip-higher   the same rule (set clip_ratio_high = 0.28 for DAPO's Clip-Higher)
    dcpo          DCPO's adaptive interval from clip_ratio_low / clip_ratio_high
    band-upper    the band's upper bound over the floor 1 - clip_ratio_low
    band-lower    the band's lower bound under the ceiling 1 + clip_ratio_high

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
`check_verl_overrides` (``bandpo check verl <overrides...>``) composes verl's own ``ppo_trainer``
config with a command line's overrides and builds the actor config as verl's workers do, before any
GPU is used.

verl's legacy trainer (``trainer.use_v1=false``) with ``algorithm.rollout_correction.bypass_mode=true``
overwrites ``loss_mode`` with ``bypass_mode`` at every step; importing this module makes that step
raise `BypassModeError` instead of silently training without BandPO.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from verl.trainer.ppo import rollout_corr_helper
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss
from verl.workers.config import PolicyLossConfig

from bandpo.checks import check_number
from bandpo.loss import PolicyTerms, policy_terms
from bandpo.metrics import metrics_to_floats
from bandpo.rules import Band, BoundRule, check_clip_method, check_eps_low, make_rule

BANDPO_LOSS_MODE = "bandpo"
"""The ``policy_loss.loss_mode`` this module registers."""

VERL_METRIC_NAMES = {
    "clip_ratio/region_mean": "actor/pg_clipfrac",
    "clip_ratio/dual_clip_mean": "actor/pg_clipfrac_lower",
    "policy/ppo_kl": "actor/ppo_kl",
}
"""BandPO metrics that are what verl's vanilla loss logs under these names."""

BANDPO_METRIC_PREFIX = "actor/bandpo/"
POLICY_LOSS_KEY = "actor_rollout_ref.actor.policy_loss"
"""Where verl's ``ppo_trainer`` config keeps the policy loss's section."""
EXTERNAL_LIB_KEY = "actor_rollout_ref.model.external_lib"


@dataclass
class BandPOPolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus BandPO's parameters (defaults: the published runs).

    Args:
        bandpo_clip_method: the bound rule, one of `bandpo.rules.CLIP_METHODS` (band | band-relax |
            band-upper | band-lower | clip | clip-higher | dcpo); the fixed margins come from
            ``actor.clip_ratio_low/high``.
        bandpo_divergence: the f-divergence of the trust region (kl | tv | chi2 | reverse_kl | hellinger).
        bandpo_delta: its radius.
        bandpo_upper_max: cap on the upper ratio bound (also DCPO's cap); null for none.
    """

    bandpo_clip_method: str = "band"
    bandpo_divergence: str = "kl"
    bandpo_delta: float = 0.05
    bandpo_upper_max: float | None = 10.0

    def __post_init__(self) -> None:
        check_clip_method(self.bandpo_clip_method, "bandpo_clip_method")
        Band(divergence=self.bandpo_divergence, delta=self.bandpo_delta, upper_max=self.bandpo_upper_max)


_ABSENT = object()


def _actor_field(config: Any, name: str) -> Any:
    """``config.<name>`` of verl's actor config; a ValueError naming ``actor.<name>`` when it lacks it."""
    value = getattr(config, name, _ABSENT)  # OmegaConf's missing-key error is an AttributeError too
    if value is _ABSENT:
        raise ValueError(
            f"verl's actor config has no actor.{name}; config must be verl's ActorConfig (or the "
            f"actor_rollout_ref.actor section of its ppo_trainer config), got {type(config).__name__}"
        )
    return value


def _policy_loss_parameter(config: Any, name: str) -> Any:
    """``config.policy_loss.<name>``, or its `BandPOPolicyLossConfig` default when absent."""
    return _actor_field(config, "policy_loss").get(name, getattr(BandPOPolicyLossConfig, name))


def _clip_ratios(config: Any) -> tuple[float, float]:
    """(clip_ratio_low, clip_ratio_high), each falling back to ``clip_ratio`` as verl's vanilla loss does,
    and range-checked whatever the rule (``band`` ignores them)."""
    low, high = (getattr(config, name, None) for name in ("clip_ratio_low", "clip_ratio_high"))
    if low is None or high is None:
        clip_ratio = _actor_field(config, "clip_ratio")
        low, high = (clip_ratio if value is None else value for value in (low, high))
    check_eps_low("actor.clip_ratio_low", low)
    check_number("actor.clip_ratio_high", high, low=0.0)
    return low, high


def bound_rule_from_config(config: Any) -> BoundRule:
    """The bound rule that ``policy_loss.bandpo_clip_method`` names, with its parameters from verl's actor config.

    Band parameters come from ``policy_loss.bandpo_*`` (absent fields: the published defaults), the
    margins of band-relax, band-upper, band-lower, clip, clip-higher and dcpo from ``clip_ratio_low`` /
    ``clip_ratio_high``.
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


def dual_clip_from_config(config: Any) -> float | None:
    """verl's dual-clip constant ``actor.clip_ratio_c`` (always on in verl), checked to be > 1; None for
    inf, which verl's own loss accepts and which caps nothing."""
    dual_clip = check_number(
        "actor.clip_ratio_c", _actor_field(config, "clip_ratio_c"), low=1.0, low_open=True, allow_infinity=True
    )
    return None if math.isinf(dual_clip) else dual_clip


def verl_metrics(terms: PolicyTerms) -> dict[str, float]:
    """BandPO's clip metrics under verl's names, plus ``actor/pg_clipfrac_lower`` (dual clip active).

    ``actor/pg_clipfrac`` is the share of valid tokens whose gradient the bounds cut,
    ``actor/pg_clipfrac_lower`` the share with A < 0 whose loss the dual clip caps, ``actor/ppo_kl`` the
    mean of log pi_old - log pi; the others appear as ``actor/bandpo/<bandpo name>``.
    """
    metrics = {VERL_METRIC_NAMES.get(name, BANDPO_METRIC_PREFIX + name): value for name, value in terms.metrics().items()}
    metrics.setdefault("actor/pg_clipfrac_lower", torch.zeros(()))  # clip_ratio_c = inf caps nothing
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
    verl aggregates its own losses (the keyword signature verl calls). Padding contributes nothing,
    whatever it holds in any input, ``rollout_is_weights`` included."""
    if config is None:
        raise ValueError("config must be verl's actor config (ActorConfig), got None")
    rule = bound_rule_from_config(config)
    dual_clip = dual_clip_from_config(config)
    global_batch_info = _actor_field(config, "global_batch_info")
    terms = policy_terms(log_prob, old_log_prob, advantages, response_mask, clip=rule, dual_clip=dual_clip)
    loss_matrix = terms.loss_matrix
    if rollout_is_weights is not None:
        loss_matrix = loss_matrix * torch.where(terms.mask != 0, rollout_is_weights, 0.0)
    loss = agg_loss(loss_mat=loss_matrix, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_batch_info)
    return loss, verl_metrics(terms)


# Bypass mode in verl's legacy trainer, detected at run time.


class BypassModeError(RuntimeError):
    """verl's bypass mode would replace ``loss_mode=bandpo`` (see `guard_bypass_mode`)."""


BYPASS_MODE_FIX = (
    "algorithm.rollout_correction.bypass_mode=true in verl's legacy trainer (trainer.use_v1=false) replaces "
    f"{POLICY_LOSS_KEY}.loss_mode=bandpo with 'bypass_mode' (verl's apply_bypass_mode), so BandPO would not be "
    "used; set trainer.use_v1=true (bypass mode there keeps loss_mode) or algorithm.rollout_correction.bypass_mode=false"
)


def guard_bypass_mode() -> None:
    """Make verl's ``apply_bypass_mode`` raise `BypassModeError` where it would overwrite ``loss_mode=bandpo``.

    verl's legacy trainer calls ``rollout_corr_helper.apply_bypass_mode`` on the driver at every step
    (imported there by name at call time, so the wrapper installed here is the one it calls); verl's
    driver imports ``model.external_lib`` when it builds the model config, so this runs before training.
    Other loss modes pass through unchanged. Idempotent.
    """
    original = rollout_corr_helper.apply_bypass_mode
    if getattr(original, "bandpo_guard", False):
        return

    @functools.wraps(original)
    def apply_bypass_mode(batch: Any, rollout_corr_config: Any = None, policy_loss_config: Any = None) -> None:
        if policy_loss_config is not None and policy_loss_config.get("loss_mode") == BANDPO_LOSS_MODE:
            raise BypassModeError(BYPASS_MODE_FIX)
        return original(batch=batch, rollout_corr_config=rollout_corr_config, policy_loss_config=policy_loss_config)

    apply_bypass_mode.bandpo_guard = True  # type: ignore[attr-defined]
    rollout_corr_helper.apply_bypass_mode = apply_bypass_mode


guard_bypass_mode()


# ``bandpo check verl``: a command line's overrides composed and built as verl does, before any GPU is used.


class VerlSettings(NamedTuple):
    """What verl's workers will run, read off the built actor config."""

    rule: BoundRule
    clip_method: str
    divergence: str
    delta: float
    upper_max: float | None
    clip_ratio_low: float
    clip_ratio_high: float
    dual_clip: float | None
    loss_agg_mode: str
    loss_scale_factor: float | None
    notes: tuple[str, ...]
    """Things that hold but change what the loss sees (e.g. bypass mode in the v1 trainer)."""


def verl_config_directory() -> str:
    """verl's own Hydra config folder, the one ``verl.trainer.main_ppo`` reads."""
    import verl

    return os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


def compose_verl_config(overrides: Sequence[str], config_name: str = "ppo_trainer") -> Any:
    """verl's ``config_name`` config with command-line ``overrides``, composed by Hydra as ``main_ppo`` does."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(verl_config_directory(), version_base=None):
        return compose(config_name, overrides=list(overrides))


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _explain_unknown_field(field: str, target: str) -> str:
    """The fix for a ``+policy_loss.<field>`` that the selected config class does not take."""
    if target != f"{__name__}.BandPOPolicyLossConfig":
        return (
            f"{POLICY_LOSS_KEY}.{field} is not a field of {target or 'PolicyLossConfig'}: select BandPO's config "
            f"with {POLICY_LOSS_KEY}._target_={__name__}.BandPOPolicyLossConfig (without '+')"
        )
    fields = [f.name for f in dataclasses.fields(BandPOPolicyLossConfig) if f.name.startswith("bandpo_")]
    close = difflib.get_close_matches(field, fields, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{POLICY_LOSS_KEY}.{field} is not a field of BandPOPolicyLossConfig{hint}; its fields: {', '.join(fields)}"


def _explain_verl_error(error: Exception, overrides: Sequence[str], target: str) -> str:
    """verl's or Hydra's error on composing or building the config, with the fix where it is known."""
    from hydra.errors import ConfigCompositionException

    cause = error.__cause__ or error
    if isinstance(error, ConfigCompositionException):
        keys = [_override_key(o) for o in overrides if not o.startswith("+") and _override_key(o) in str(error)]
        if keys and keys[0].startswith(f"{POLICY_LOSS_KEY}.bandpo_"):
            return (
                f"{keys[0]} is not in verl's config: add it with a leading '+' (+{keys[0]}=...), together with "
                f"{POLICY_LOSS_KEY}._target_={__name__}.BandPOPolicyLossConfig"
            )
        return f"Hydra could not compose verl's config: {error}"
    if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
        field = str(cause).rsplit("argument", 1)[1].strip(" '\"")
        return _explain_unknown_field(field, target)
    if isinstance(cause, ValueError):
        return str(cause)
    return f"verl rejected the configuration: {cause}"


def check_verl_overrides(overrides: Sequence[str], environment: dict[str, str] | None = None) -> VerlSettings:
    """Compose verl's ``ppo_trainer`` config with ``overrides`` and build the actor config as verl's workers
    do (``omega_conf_to_dataclass``), then the bound rule and dual clip as the loss will; ValueError with
    the fix when verl would not run BandPO as written.

    Refused: a missing '+' before a ``bandpo_*`` field, a ``bandpo_*`` field without
    ``_target_=...BandPOPolicyLossConfig``, an unknown field, a bad value, ``loss_mode`` other than
    ``bandpo``, no ``model.external_lib`` (nor ``VERL_USE_EXTERNAL_MODULES`` in ``environment``) naming this
    module, and bypass mode in the legacy trainer (`BYPASS_MODE_FIX`).
    """
    from verl.utils.config import omega_conf_to_dataclass

    environment = dict(os.environ) if environment is None else environment
    target = ""
    try:
        config = compose_verl_config(overrides)
        target = str(config.actor_rollout_ref.actor.policy_loss.get("_target_", ""))
        actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    except Exception as error:  # Hydra and verl raise many kinds; each is explained or passed on
        raise ValueError(_explain_verl_error(error, overrides, target)) from error
    loss_mode = actor.policy_loss.get("loss_mode")
    if loss_mode != BANDPO_LOSS_MODE:
        raise ValueError(
            f"{POLICY_LOSS_KEY}.loss_mode is {loss_mode!r}, so BandPO is not used: add {POLICY_LOSS_KEY}.loss_mode=bandpo"
        )
    external = [config.actor_rollout_ref.model.get("external_lib"), environment.get("VERL_USE_EXTERNAL_MODULES")]
    if not any(__name__ in str(value).split(",") for value in external if value):
        raise ValueError(
            f"nothing registers loss_mode=bandpo in verl's workers: add {EXTERNAL_LIB_KEY}={__name__} "
            f"(or set VERL_USE_EXTERNAL_MODULES={__name__} in the job's environment)"
        )
    bypass_mode = bool(config.algorithm.get("rollout_correction", {}).get("bypass_mode", False))
    if bypass_mode and not config.trainer.get("use_v1", True):
        raise ValueError(BYPASS_MODE_FIX)
    notes: tuple[str, ...] = ()
    if bypass_mode:
        notes = ("bypass mode: the old log-probs are the rollout engine's, so the band is computed from pi_rollout",)
    rule = bound_rule_from_config(actor)
    clip_ratio_low, clip_ratio_high = _clip_ratios(actor)
    return VerlSettings(
        rule=rule,
        clip_method=_policy_loss_parameter(actor, "bandpo_clip_method"),
        divergence=_policy_loss_parameter(actor, "bandpo_divergence"),
        delta=_policy_loss_parameter(actor, "bandpo_delta"),
        upper_max=_policy_loss_parameter(actor, "bandpo_upper_max"),
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        dual_clip=dual_clip_from_config(actor),
        loss_agg_mode=actor.loss_agg_mode,
        loss_scale_factor=actor.get("loss_scale_factor"),
        notes=notes,
    )
