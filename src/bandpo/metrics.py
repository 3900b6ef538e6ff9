"""The clipping diagnostics the BandPO paper studies, as tensors (no host synchronisation).

For valid tokens with ratio r, bounds [l, u], advantage A and old probability p:

    clip_ratio/low_mean         share with r < l and A < 0          (gradient cut below; TRL's name)
    clip_ratio/high_mean        share with r > u and A > 0          (gradient cut above)
    clip_ratio/region_mean      share of either                     (the paper's overall clip rate)
    clip_ratio/out_of_band      share with r outside [l, u], whatever the sign of A
    clip_ratio/low_p_high_share clip-high events with p < 0.2 / all gradient-cut tokens (Figure 3b)
    clip_ratio/dual_clip_mean   share with A < 0 whose loss the dual clip c caps (max(r, clip(r)) > c)
    bounds/lower_mean, bounds/upper_mean, policy/ppo_kl (mean of log pi_old - log pi), entropy/mean
    tokens/p_old_<bucket>, clipped/p_old_<bucket>   counts of valid / gradient-cut tokens by p

The mechanism diagnostics split the same events by side and by p (``low_p``: p < 0.2; ``high_p``:
p >= 0.2), each a mean over its own group of tokens (`DENOMINATORS` names the group's count):

    clip_ratio/low_mean_low_p   share of low-p tokens cut below     (and ``high_mean_low_p``,
    clip_ratio/low_mean_high_p  share of high-p tokens cut below     ``high_mean_high_p`` above)
    policy/low_p_pos_log_ratio  mean log r over low-p tokens with A > 0   (how far rare tokens rose)
    policy/low_p_neg_log_ratio  mean log r over low-p tokens with A < 0   (how far rare tokens fell)
    tokens/valid, tokens/clipped, tokens/low_p, tokens/high_p, tokens/low_p_pos, tokens/low_p_neg
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import Tensor

LOW_PROBABILITY = 0.2
P_BUCKET_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DENOMINATORS = {
    "clip_ratio/low_p_high_share": "tokens/clipped",
    "clip_ratio/low_mean_low_p": "tokens/low_p",
    "clip_ratio/high_mean_low_p": "tokens/low_p",
    "clip_ratio/low_mean_high_p": "tokens/high_p",
    "clip_ratio/high_mean_high_p": "tokens/high_p",
    "policy/low_p_pos_log_ratio": "tokens/low_p_pos",
    "policy/low_p_neg_log_ratio": "tokens/low_p_neg",
}
"""Means over a group of tokens and the count metric of that group; every other metric not under
`COUNT_PREFIXES` is a mean over ``tokens/valid``. Engines that reduce over processes weight each mean
by its denominator (`reduce_weights`)."""
COUNT_PREFIXES = ("tokens/", "clipped/")
"""Metrics that are token counts (summed over processes, not averaged)."""


def bucket_names() -> list[str]:
    return [f"{lo:.1f}-{hi:.1f}" for lo, hi in itertools.pairwise(P_BUCKET_EDGES)]


def clip_metrics(
    *,
    ratio: Tensor,
    lower: Tensor,
    upper: Tensor,
    advantages: Tensor,
    old_log_probs: Tensor,
    log_probs: Tensor,
    mask: Tensor,
    entropy: Tensor | None = None,
    dual_clip: float | None = None,
) -> dict[str, Tensor]:
    """The metrics above; every argument (B, T), ``mask`` float. Returns detached 0-d tensors.

    Keyword-only: eight tensors of one shape, where swapping two would silently give wrong numbers.
    """
    with torch.no_grad():
        valid = mask > 0
        count = mask.sum().clamp_min(1.0)
        old_p = old_log_probs.exp()
        cut_low = (ratio < lower) & (advantages < 0) & valid
        cut_high = (ratio > upper) & (advantages > 0) & valid
        cut = cut_low | cut_high
        out_of_band = ((ratio < lower) | (ratio > upper)) & valid
        low_p = (old_p < LOW_PROBABILITY) & valid
        high_p = valid & ~low_p
        low_p_high = cut_high & low_p
        low_p_pos = low_p & (advantages > 0)
        low_p_neg = low_p & (advantages < 0)
        log_ratio = log_probs - old_log_probs

        def share(flags: Tensor) -> Tensor:
            return flags.sum() / count

        def group_mean(values: Tensor, group: Tensor) -> Tensor:  # 0 for an empty group
            return torch.where(group, values, 0.0).sum() / group.sum().clamp_min(1)

        def masked_mean(values: Tensor) -> Tensor:
            return (values * mask).sum() / count

        metrics = {
            "clip_ratio/low_mean": share(cut_low),
            "clip_ratio/high_mean": share(cut_high),
            "clip_ratio/region_mean": share(cut),
            "clip_ratio/out_of_band": share(out_of_band),
            "clip_ratio/low_p_high_share": low_p_high.sum() / cut.sum().clamp_min(1),
            "clip_ratio/low_mean_low_p": group_mean(cut_low.to(count.dtype), low_p),
            "clip_ratio/high_mean_low_p": group_mean(cut_high.to(count.dtype), low_p),
            "clip_ratio/low_mean_high_p": group_mean(cut_low.to(count.dtype), high_p),
            "clip_ratio/high_mean_high_p": group_mean(cut_high.to(count.dtype), high_p),
            "policy/low_p_pos_log_ratio": group_mean(log_ratio, low_p_pos),
            "policy/low_p_neg_log_ratio": group_mean(log_ratio, low_p_neg),
            "bounds/lower_mean": masked_mean(lower),
            "bounds/upper_mean": masked_mean(upper),
            "policy/ppo_kl": masked_mean(old_log_probs - log_probs),
        }
        for name, group in (("valid", valid), ("clipped", cut), ("low_p", low_p), ("high_p", high_p),
                            ("low_p_pos", low_p_pos), ("low_p_neg", low_p_neg)):
            metrics[f"tokens/{name}"] = group.sum().to(count.dtype)
        bucket = torch.bucketize(old_p, torch.tensor(P_BUCKET_EDGES[1:-1], device=old_p.device), right=True)
        for index, name in enumerate(bucket_names()):
            in_bucket = bucket == index
            metrics[f"tokens/p_old_{name}"] = (in_bucket & valid).sum().to(count.dtype)
            metrics[f"clipped/p_old_{name}"] = (in_bucket & cut).sum().to(count.dtype)
        if entropy is not None:
            metrics["entropy/mean"] = masked_mean(entropy)
        if dual_clip is not None:
            unclipped_side = torch.maximum(ratio, torch.clamp(ratio, lower, upper))
            metrics["clip_ratio/dual_clip_mean"] = share((advantages < 0) & (unclipped_side > dual_clip) & valid)
    return {key: value.detach() for key, value in metrics.items()}


def reduce_weights(metrics: Mapping[str, Tensor]) -> dict[str, Tensor | None]:
    """For each metric, what to multiply it by before summing it over processes (then divide the sum
    by the summed weight): its group's count for a mean (`DENOMINATORS`; ``tokens/valid`` by default),
    None for a count (summed as it is)."""
    return {
        name: None if name.startswith(COUNT_PREFIXES) else metrics[DENOMINATORS.get(name, "tokens/valid")]
        for name in metrics
    }


def metrics_to_floats(metrics: Mapping[str, Tensor]) -> dict[str, float]:
    """Python floats for logging: one host transfer for all metrics together."""
    if not metrics:
        return {}
    keys = list(metrics)
    values = torch.stack([metrics[key].detach().float().reshape(()) for key in keys]).cpu().tolist()
    return dict(zip(keys, values, strict=True))
