"""A drop-in for OpenRLHF 0.11's ``openrlhf.models.PolicyLoss`` with BandPO's bounds.

:class:`BandPOPolicyLoss` takes PolicyLoss's constructor arguments (``clip_eps_low``/``clip_eps_high``
are the margins of the ``clip``/``clip-higher``/``dcpo`` baselines), plus keyword-only ``clip_method``,
``divergence``, ``delta`` and ``upper_max``; its ``forward`` has PolicyLoss's signature and returns
the same tuple ``(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio)``. Supported: PPO-style token
ratios (``policy_loss_type="ppo"``) with the train/rollout correction off (``is_correction_level="off"``);
anything else raises ValueError.

OpenRLHF builds its PolicyLoss inside the Ray actor workers (``openrlhf.trainer.ray.ppo_actor``), so the
swap must run in each worker: pass :func:`use_bandpo_policy_loss` as Ray's ``worker_process_setup_hook``
in the job's runtime env, with BandPO's parameters as ``BANDPO_*`` environment variables::

    ray job submit --runtime-env-json='{
        "worker_process_setup_hook": "bandpo.integrations.openrlhf.use_bandpo_policy_loss",
        "env_vars": {"BANDPO_CLIP_METHOD": "band", "BANDPO_DELTA": "0.05"}}' \\
        -- python3 -m openrlhf.cli.train_ppo_ray ...
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from bandpo.aggregation import aggregate
from bandpo.checks import check_number
from bandpo.loss import policy_terms
from bandpo.rules import BoundRule, make_rule

OPENRLHF_ACTOR_MODULE = "openrlhf.trainer.ray.ppo_actor"
"""The module whose ``PolicyLoss`` name OpenRLHF's actor trainer instantiates."""

ENVIRONMENT_PARAMETERS = {
    "BANDPO_CLIP_METHOD": ("clip_method", str),
    "BANDPO_DIVERGENCE": ("divergence", str),
    "BANDPO_DELTA": ("delta", float),
    "BANDPO_UPPER_MAX": ("upper_max", float),
}
"""Environment variables read by :func:`use_bandpo_policy_loss` and the keyword each one sets."""


def global_aggregate(
    loss_matrix: Tensor,
    mask: Tensor,
    token_level_loss: bool,
    dp_size: int,
    batch_num_tokens: Optional[float],
    global_batch_size: Optional[float],
) -> Tensor:
    """OpenRLHF's reduction: token-mean or seq-mean-token-mean, over the global batch when its size is given.

    With ``batch_num_tokens`` (token mode) or ``global_batch_size`` (sequence mode) the local sum is
    divided by that global count and multiplied by ``dp_size``, so the data-parallel average of the
    per-rank losses is the full-batch loss; without it the loss is the local mean (:mod:`bandpo.aggregation`).
    """
    if token_level_loss:
        if batch_num_tokens is None:
            return aggregate(loss_matrix, mask, "token-mean")
        return (loss_matrix * mask).sum() / batch_num_tokens * dp_size
    if global_batch_size is None:
        return aggregate(loss_matrix, mask, "seq-mean-token-mean")
    tokens_per_sequence = mask.sum(-1)
    sequence_means = (loss_matrix * mask).sum(-1) / tokens_per_sequence.clamp_min(1.0)
    return sequence_means.sum() / global_batch_size * dp_size


class BandPOPolicyLoss(nn.Module):
    """OpenRLHF's PolicyLoss with the ratio interval of a BandPO bound rule.

    Args:
        clip_eps_low, clip_eps_high: margins of the fixed-interval and DCPO rules (ignored by ``band``).
        dual_clip: c > 1 caps the loss of negative-advantage tokens at -c A; None for no cap.
        token_level_loss: token-mean (True) or seq-mean-token-mean (False), as in OpenRLHF.
        policy_loss_type: must be ``"ppo"``.
        is_correction_level: must be ``"off"``; ``is_correction_mode``, ``is_correction_gating`` and
            ``is_correction_threshold`` are accepted for signature compatibility and then unused.
        clip_method: band | clip | clip-higher | dcpo.
        divergence, delta, upper_max: the Band rule (published: kl, 0.05, 10); ``upper_max`` also caps DCPO.
    """

    def __init__(
        self,
        clip_eps_low: float = 0.2,
        clip_eps_high: float = 0.2,
        dual_clip: Optional[float] = None,
        token_level_loss: bool = True,
        policy_loss_type: str = "ppo",
        is_correction_level: str = "off",
        is_correction_mode: str = "mask",
        is_correction_gating: str = "ratio",
        is_correction_threshold: tuple[float, float] = (0.5, 5.0),
        *,
        clip_method: str = "band",
        divergence: str = "kl",
        delta: float = 0.05,
        upper_max: Optional[float] = 10.0,
    ) -> None:
        super().__init__()
        if policy_loss_type != "ppo":
            raise ValueError(f"policy_loss_type must be 'ppo' for BandPOPolicyLoss, got {policy_loss_type!r}")
        if is_correction_level != "off":
            raise ValueError(
                f"is_correction_level must be 'off' for BandPOPolicyLoss (no rollout correction), "
                f"got {is_correction_level!r}"
            )
        check_number("dual_clip", dual_clip, low=1.0, low_open=True, allow_none=True)
        self.rule: BoundRule = make_rule(
            clip_method, divergence=divergence, delta=delta, upper_max=upper_max,
            eps_low=clip_eps_low, eps_high=clip_eps_high,
        )
        self.dual_clip = dual_clip
        self.token_level_loss = token_level_loss
        self.is_correction_mode = is_correction_mode
        self.is_correction_gating = is_correction_gating
        self.is_correction_threshold = is_correction_threshold
        self.last_metrics: dict[str, Tensor] = {}
        """BandPO's clip metrics (:mod:`bandpo.metrics`) of the latest forward, as detached tensors."""

    def forward(
        self,
        log_probs: Tensor,
        old_log_probs: Tensor,
        advantages: Tensor,
        action_mask: Optional[Tensor] = None,
        rollout_log_probs: Optional[Tensor] = None,
        dp_size: int = 1,
        batch_num_tokens: Optional[float] = None,
        global_batch_size: Optional[float] = None,
    ) -> tuple[Tensor, Tensor, Tensor, None, None]:
        """(loss, clip_ratio, ppo_kl, None, None) as OpenRLHF's PolicyLoss returns them with correction off.

        ``clip_ratio`` is the share of valid tokens whose gradient the bounds cut, ``ppo_kl`` the mean of
        log pi_old - log pi; ``rollout_log_probs`` is unused (correction off).
        """
        mask = torch.ones_like(log_probs) if action_mask is None else action_mask
        terms = policy_terms(log_probs, old_log_probs, advantages, mask, clip=self.rule, dual_clip=self.dual_clip)
        loss = global_aggregate(
            terms.loss_matrix, terms.mask, self.token_level_loss, dp_size, batch_num_tokens, global_batch_size
        )
        self.last_metrics = terms.metrics()
        return loss, self.last_metrics["clip_ratio/region_mean"], self.last_metrics["policy/ppo_kl"], None, None


def bandpo_parameters_from_environment(environment: Mapping[str, str]) -> dict[str, object]:
    """BandPOPolicyLoss keywords from ``BANDPO_*`` variables; an unknown ``BANDPO_*`` name is an error."""
    unknown = sorted(name for name in environment if name.startswith("BANDPO_") and name not in ENVIRONMENT_PARAMETERS)
    if unknown:
        raise ValueError(
            f"unknown BandPO environment variable(s) {', '.join(unknown)}; accepted: {', '.join(ENVIRONMENT_PARAMETERS)}"
        )
    parameters: dict[str, object] = {}
    for name, (keyword, convert) in ENVIRONMENT_PARAMETERS.items():
        if name in environment:
            raw = environment[name]
            if keyword == "upper_max" and raw.lower() in ("none", "null"):
                parameters[keyword] = None
                continue
            try:
                parameters[keyword] = convert(raw)
            except ValueError as error:
                raise ValueError(f"{name} must be a {convert.__name__}, got {raw!r}") from error
    return parameters


def use_bandpo_policy_loss(target_module: str = OPENRLHF_ACTOR_MODULE) -> None:
    """Make ``target_module.PolicyLoss`` build :class:`BandPOPolicyLoss` with the ``BANDPO_*`` parameters.

    Meant as Ray's ``worker_process_setup_hook`` (it runs in every worker before OpenRLHF builds its
    trainer); the parameters are checked here, so a bad value fails at worker start.
    """
    parameters = bandpo_parameters_from_environment(os.environ)
    BandPOPolicyLoss(**parameters)  # validate before patching
    module = importlib.import_module(target_module)
    module.PolicyLoss = functools.partial(BandPOPolicyLoss, **parameters)
