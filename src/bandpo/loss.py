"""The BandPO policy loss: PPO's pessimistic clipped surrogate with per-token bounds.

Per valid token t with advantage A_t, ratio r_t = exp(log pi - log pi_old) and a rule's bounds:

    loss_t = max(-A_t r_t, -A_t clip(r_t, l_t, u_t))        (no gradient through l_t, u_t)
    dual clip c > 1, for A_t < 0:  loss_t = min(loss_t, -c A_t)

then aggregated over the batch (`bandpo.aggregation`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from bandpo.aggregation import aggregate, check_loss_agg_mode
from bandpo.checks import check_number
from bandpo.metrics import clip_metrics
from bandpo.rules import BoundRule

LOG_RATIO_LIMIT = 20.0
"""|log r| is clamped here before exp: beyond it the token is clipped anyway, and exp stays finite."""


def _check_inputs(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor) -> None:
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must have shape (batch, tokens), got {tuple(log_probs.shape)}")
    for name, tensor in (("old_log_probs", old_log_probs), ("mask", mask)):
        if tensor.shape != log_probs.shape:
            raise ValueError(
                f"{name} must have the shape of log_probs {tuple(log_probs.shape)}, got {tuple(tensor.shape)}"
            )
    if advantages.shape not in (log_probs.shape[:1], log_probs.shape):
        raise ValueError(
            f"advantages must have shape {tuple(log_probs.shape[:1])} or {tuple(log_probs.shape)}, "
            f"got {tuple(advantages.shape)}"
        )


def _check_dual_clip(dual_clip: float | None) -> None:
    check_number("dual_clip", dual_clip, low=1.0, low_open=True, allow_none=True)


def per_token_policy_loss(
    ratio: Tensor, lower: Tensor, upper: Tensor, advantages: Tensor, dual_clip: float | None = None
) -> Tensor:
    """max(-A r, -A clip(r, l, u)), capped at -c A where A < 0 when ``dual_clip`` = c is given."""
    clipped = torch.clamp(ratio, lower, upper)
    loss = torch.maximum(-advantages * ratio, -advantages * clipped)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    return loss


class PolicyTerms(NamedTuple):
    """What every engine's loss is made of before it aggregates: the loss matrix and the cleaned
    inputs the metrics need (padding read as p = 1, ratio 1 and A = 0, so its loss is 0; advantages
    broadcast to (B, T))."""

    loss_matrix: Tensor
    ratio: Tensor
    lower: Tensor
    upper: Tensor
    advantages: Tensor
    old_log_probs: Tensor
    log_probs: Tensor
    mask: Tensor
    dual_clip: float | None

    def metrics(self, entropy: Tensor | None = None) -> dict[str, Tensor]:
        """`bandpo.metrics.clip_metrics` of these terms (with the dual-clip share when it is on); the
        entropy of padding, whatever it holds, is read as 0."""
        if entropy is not None:
            entropy = torch.where(self.mask != 0, entropy.detach(), 0.0)
        return clip_metrics(
            ratio=self.ratio, lower=self.lower, upper=self.upper, advantages=self.advantages,
            old_log_probs=self.old_log_probs, log_probs=self.log_probs.detach(), mask=self.mask, entropy=entropy,
            dual_clip=self.dual_clip,
        )


class ClippedSurrogate(NamedTuple):
    """Per-token pieces of the loss: the loss matrix and what the metrics need (no history but the loss)."""

    loss_matrix: Tensor
    ratio: Tensor
    lower: Tensor
    upper: Tensor


def clipped_surrogate(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    clip: BoundRule,
    dual_clip: float | None = None,
) -> ClippedSurrogate:
    """The per-token loss with r = exp(clamp(log pi - log pi_old, -20, 20)) and the rule's bounds.

    ``advantages`` must broadcast against ``log_probs``; the bounds carry no gradient.
    """
    old_log_probs = old_log_probs.detach()
    ratio = torch.exp((log_probs - old_log_probs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    lower, upper = clip.bounds(old_log_probs)
    lower, upper = lower.detach().to(ratio.dtype), upper.detach().to(ratio.dtype)
    loss_matrix = per_token_policy_loss(ratio, lower, upper, advantages, dual_clip)
    return ClippedSurrogate(loss_matrix, ratio.detach(), lower, upper)


def policy_terms(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip: BoundRule,
    dual_clip: float | None = None,
) -> PolicyTerms:
    """The front half every engine shares (`policy_loss`, verl, OpenRLHF): validate the
    inputs, the rule and ``dual_clip``, broadcast (B,) advantages, read padding (mask 0) as p = 1,
    ratio 1 and A = 0, and form the clipped surrogate. Engines differ only in how they aggregate.

    Padding may hold any value in any input (+-inf, NaN): its loss is exactly 0, so it contributes
    nothing to the loss, its gradient or the metrics, however an engine aggregates. NaN advantages on
    valid tokens are refused."""
    _check_inputs(log_probs, old_log_probs, advantages, mask)
    _check_dual_clip(dual_clip)
    if isinstance(clip, type) or not isinstance(clip, BoundRule):
        raise ValueError(
            f"clip must be a bound rule instance such as Band(), FixedClip() or DCPO() (anything with "
            f"bounds(old_log_probs)), got {clip!r}"
        )
    valid = mask != 0
    mask = mask.to(log_probs.dtype)
    log_probs = torch.where(valid, log_probs, 0.0)
    old_log_probs = torch.where(valid, old_log_probs, 0.0).detach()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.expand_as(log_probs)
    if (torch.isnan(advantages) & valid).any():
        raise ValueError("advantages contain NaN on valid tokens (mask != 0)")
    advantages = torch.where(valid, advantages, 0.0)
    surrogate = clipped_surrogate(log_probs, old_log_probs, advantages, clip, dual_clip)
    return PolicyTerms(*surrogate, advantages, old_log_probs, log_probs, mask, dual_clip)


def policy_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip: BoundRule,
    loss_agg_mode: str = "token-mean",
    dual_clip: float | None = None,
    loss_agg_constant: float | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped policy-gradient loss and its clipping metrics.

    Args:
        log_probs: log pi(a_t | s_t) under the current policy, (B, T), with autograd history.
        old_log_probs: log pi_old(a_t | s_t) of the policy that sampled the tokens, (B, T).
        advantages: (B,) per sequence (GRPO) or (B, T) per token.
        mask: (B, T), bool or float, 1 on valid response tokens.
        clip: a bound rule — ``Band(...)``, ``FixedClip(...)``, ``DCPO(...)`` or any object with
            ``bounds(old_log_probs) -> (lower, upper)``.
        loss_agg_mode: token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm.
        dual_clip: c > 1 caps the loss of negative-advantage tokens at -c A (published: 10).
        loss_agg_constant: the constant of ``seq-mean-token-sum-norm`` (default: T).
        entropy: optional per-token entropy (B, T), reported as ``entropy/mean``.

    Returns:
        (loss, metrics): the scalar loss and a dict of detached 0-d tensors
        (`bandpo.metrics.metrics_to_floats` turns them into floats).
    """
    check_loss_agg_mode(loss_agg_mode)
    terms = policy_terms(log_probs, old_log_probs, advantages, mask, clip=clip, dual_clip=dual_clip)
    loss = aggregate(terms.loss_matrix, terms.mask, loss_agg_mode, loss_agg_constant)
    return loss, terms.metrics(entropy)
