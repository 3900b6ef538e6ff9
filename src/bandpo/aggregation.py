"""Reducing a (batch, tokens) loss matrix to a scalar, the ways RL trainers for LLMs do.

With mask m (1 on valid response tokens) and per-token loss L:

    token-mean               sum_{i,t} L m / sum_{i,t} m                    (all tokens weigh alike)
    seq-mean-token-mean      mean_i [ sum_t L m / sum_t m ]                 (published BandPO runs)
    seq-mean-token-sum       mean_i [ sum_t L m ]
    seq-mean-token-sum-norm  sum_{i,t} L m / (B * C), C = constant          (Dr. GRPO; C defaults to T)

Sequences without valid tokens do not count in the ``seq-mean-*`` means; an all-zero mask (or T = 0)
gives 0. Masked entries of L may hold anything, +-inf and NaN included: they contribute nothing.

``seq-mean-token-sum-norm`` divides by B * C, as Dr. GRPO does, with B every row of the batch. verl
0.9.1's ``agg_loss`` divides the same sum by G * C, where G is ``global_batch_size`` when verl's
trainer passes it (the mini-batch's sequence count) and otherwise the number of rows with a valid
token, and C is ``loss_scale_factor`` or else T (each micro-batch's padded length). The two agree
unless a row is fully masked; the verl integration aggregates with verl's own ``agg_loss``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bandpo.checks import check_number

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def check_loss_agg_mode(loss_agg_mode: str) -> None:
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {', '.join(LOSS_AGG_MODES)}, got {loss_agg_mode!r}")


def aggregate(
    loss_matrix: Tensor, mask: Tensor, loss_agg_mode: str, loss_agg_constant: float | None = None
) -> Tensor:
    """The scalar loss of ``loss_matrix`` (B, T) under ``mask`` (B, T, float) for one mode above.

    ``loss_agg_constant`` (C of ``seq-mean-token-sum-norm``, default T) is checked in every mode.
    """
    check_loss_agg_mode(loss_agg_mode)
    check_number("loss_agg_constant", loss_agg_constant, low=0.0, low_open=True, allow_none=True)
    masked = torch.where(mask != 0, loss_matrix, 0.0) * mask
    if loss_agg_mode == "token-mean":
        return masked.sum() / mask.sum().clamp_min(1.0)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        constant = max(mask.shape[-1], 1) if loss_agg_constant is None else loss_agg_constant
        return masked.sum() / (max(mask.shape[0], 1) * constant)
    tokens_per_sequence = mask.sum(-1)
    sequence_losses = masked.sum(-1)
    if loss_agg_mode == "seq-mean-token-mean":
        sequence_losses = sequence_losses / tokens_per_sequence.clamp_min(1.0)
    valid_sequences = (tokens_per_sequence > 0).sum().clamp_min(1)
    return sequence_losses.sum() / valid_sequences
