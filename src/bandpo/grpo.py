"""The other terms of a GRPO-style objective: group advantages, the KL penalty, token entropy."""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def group_advantages(rewards: Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantages, rewards grouped consecutively by prompt:

        A_i = (R_i - mean_group(R)) / (std_group(R) + eps)     (no division when scale=False)

    >>> group_advantages(torch.tensor([1, 0, 0, 0, 1, 1, 1, 1]), group_size=4, scale=False).tolist()
    [0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]
    """
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    if not rewards.is_floating_point():  # verifiers often return ints or bools
        rewards = rewards.to(torch.get_default_dtype())
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if scale and group_size > 1:
        centred = centred / (grouped.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def kl_penalty(log_probs: Tensor, ref_log_probs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi, with x = log pi_ref - log pi:

        k1 = -x,   k2 = x^2 / 2,   k3 = exp(x) - x - 1   (low-variance, unbiased, >= 0)
    """
    log_ref_ratio = ref_log_probs - log_probs
    if estimator == "k1":
        return -log_ref_ratio
    if estimator == "k2":
        return 0.5 * log_ref_ratio.square()
    if estimator == "k3":
        return torch.expm1(log_ref_ratio) - log_ref_ratio
    raise ValueError(f"estimator must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = logsumexp(z) - sum softmax(z) z over the last axis (-inf logits, masked tokens, add 0)."""
    probs = torch.softmax(logits, dim=-1)
    finite_logits = torch.where(probs > 0, logits, 0.0)
    return torch.logsumexp(logits, dim=-1) - (probs * finite_logits).sum(-1)
