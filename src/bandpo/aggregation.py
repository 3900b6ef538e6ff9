"""Reducing a (batch, tokens) loss matrix to a scalar, the ways RL trainers for LLMs do.

With mask m (1 on valid response tokens) and per-token loss L:

    token-mean               sum_{i,t} L m / sum_{i,t} m                    (all tokens weigh alike)
    seq-mean-token-mean      mean_i [ sum_t L m / sum_t m ]                 (published BandPO runs)
    seq-mean-token-sum       mean_i [ sum_t L m ]
    seq-mean-token-sum-norm  sum_{i,t} L m / (B * C), C = constant          (Dr. GRPO; C defaults to T)

Sequences without valid tokens do not count in the ``seq-mean-*`` means; an all-zero mask gives 0.

``seq-mean-token-sum-norm`` divides by B * C, as Dr. GRPO does. verl and the original BandPO code
divide the same sum by T alone, a loss B times larger: the same direction, a learning rate B times
higher. The verl integration aggregates with verl's own ``agg_loss``, so there it is verl's convention.
"""

from __future__ import annotations

from torch import Tensor

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def check_loss_agg_mode(loss_agg_mode: str) -> None:
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {', '.join(LOSS_AGG_MODES)}, got {loss_agg_mode!r}")


def aggregate(
    loss_matrix: Tensor, mask: Tensor, loss_agg_mode: str, loss_agg_constant: float | None = None
) -> Tensor:
    """The scalar loss of ``loss_matrix`` (B, T) under ``mask`` (B, T, float) for one mode above."""
    check_loss_agg_mode(loss_agg_mode)
    masked = loss_matrix * mask
    if loss_agg_mode == "token-mean":
        return masked.sum() / mask.sum().clamp_min(1.0)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        constant = mask.shape[-1] if loss_agg_constant is None else loss_agg_constant
        if not constant > 0:
            raise ValueError(f"loss_agg_constant must be a positive number, got {loss_agg_constant!r}")
        return masked.sum() / (mask.shape[0] * constant)
    tokens_per_sequence = mask.sum(-1)
    sequence_losses = masked.sum(-1)
    if loss_agg_mode == "seq-mean-token-mean":
        sequence_losses = sequence_losses / tokens_per_sequence.clamp_min(1.0)
    valid_sequences = (tokens_per_sequence > 0).sum().clamp_min(1)
    return sequence_losses.sum() / valid_sequences
