"""Specification of the clipping metrics (``bandpo.clip_metrics`` via ``policy_loss``), SPEC §5.

Over valid tokens (N of them), with ratio r, bounds [l, u], advantage A, old probability p:

    clip_ratio/low_mean          #{r < l and A < 0} / N        gradient cut below (TRL's meaning)
    clip_ratio/high_mean         #{r > u and A > 0} / N        gradient cut above
    clip_ratio/region_mean       #{either} / N                 the paper's overall clip rate (Fig. 3a)
    clip_ratio/out_of_band       #{r outside [l, u]} / N       raw, whatever the sign of A
    clip_ratio/low_p_high_share  #{r > u, A > 0, p < 0.2} / #{gradient cut}             (Fig. 3b)
    bounds/lower_mean, bounds/upper_mean, policy/ppo_kl = mean(log pi_old - log pi), entropy/mean
    tokens/p_old_<bucket>, clipped/p_old_<bucket>: counts of valid / gradient-cut tokens by p

The mechanism split, each over its own group (low p: p < 0.2, high p: p >= 0.2):

    clip_ratio/{low,high}_mean_{low,high}_p   #{cut on that side in the group} / #{group}
    policy/low_p_{pos,neg}_log_ratio          mean log r over low-p tokens with A > 0 / A < 0
"""

from __future__ import annotations

import math

import pytest
import torch

from bandpo import DCPO, Band, FixedClip, clip_metrics, metrics_to_floats, policy_loss
from bandpo.metrics import COUNT_PREFIXES, DENOMINATORS, reduce_weights

# A hand-built 2 x 5 batch under FixedClip(0.2, 0.2), bounds [0.8, 1.2]. Row 1's last two tokens
# are padding built to look clipped (they must not count).
#            p_old  r    A     valid  what it is
TOKENS = [
    [(0.10, 1.5, 1.0, 1),   # cut high, low p
     (0.50, 1.5, 1.0, 1),   # cut high
     (0.90, 0.5, -1.0, 1),  # cut low
     (0.30, 0.5, 1.0, 1),   # out of band, gradient flows
     (0.70, 1.0, 1.0, 1)],  # inside
    [(0.05, 1.1, -1.0, 1),  # inside
     (0.15, 2.0, -1.0, 1),  # out of band, gradient flows
     (0.95, 1.3, 1.0, 1),   # cut high, high p
     (0.10, 3.0, 1.0, 0),   # padding (would be a low-p cut high)
     (0.50, 0.1, -1.0, 0)], # padding (would be a cut low)
]
ENTROPY = [[0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 9.0, 9.0]]
N_VALID = 8
VALID = [tok for row in TOKENS for tok in row if tok[3]]


def hand_batch():
    p = torch.tensor([[t[0] for t in row] for row in TOKENS], dtype=torch.float64)
    r = torch.tensor([[t[1] for t in row] for row in TOKENS], dtype=torch.float64)
    advantages = torch.tensor([[t[2] for t in row] for row in TOKENS], dtype=torch.float64)
    mask = torch.tensor([[t[3] for t in row] for row in TOKENS], dtype=torch.float64)
    old = torch.log(p)
    new = (old + torch.log(r)).requires_grad_(True)
    return new, old, advantages, mask


@pytest.fixture(scope="module")
def metrics():
    new, old, advantages, mask = hand_batch()
    entropy = torch.tensor(ENTROPY, dtype=torch.float64)
    _, metrics = policy_loss(new, old, advantages, mask, clip=FixedClip(0.2, 0.2), entropy=entropy)
    return metrics


def test_clip_low_mean_counts_r_below_lower_with_negative_advantage(metrics):
    """Only (p 0.9, r 0.5, A -1): 1 / 8."""
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(1 / N_VALID)


def test_clip_high_mean_counts_r_above_upper_with_positive_advantage(metrics):
    """(0.1, 1.5, +1), (0.5, 1.5, +1), (0.95, 1.3, +1): 3 / 8; (0.15, 2.0, -1) is not cut."""
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(3 / N_VALID)


def test_clip_region_mean_is_the_share_of_gradient_cut_tokens(metrics):
    """low + high = 4 / 8 (the paper's overall clip rate)."""
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(4 / N_VALID)


def test_out_of_band_counts_every_ratio_outside_the_bounds(metrics):
    """Row 0: four tokens outside [0.8, 1.2]; row 1: r = 2.0 and 1.3 -> 6 / 8."""
    assert metrics["clip_ratio/out_of_band"].item() == pytest.approx(6 / N_VALID)


def test_low_p_high_share_is_low_p_clip_high_among_all_gradient_cut_tokens(metrics):
    """One clip-high with p < 0.2 (p = 0.1) among 4 gradient-cut tokens: 1 / 4."""
    assert metrics["clip_ratio/low_p_high_share"].item() == pytest.approx(1 / 4)


def test_bound_means_are_over_valid_tokens(metrics):
    assert metrics["bounds/lower_mean"].item() == pytest.approx(0.8)
    assert metrics["bounds/upper_mean"].item() == pytest.approx(1.2)


def test_ppo_kl_is_the_mean_of_old_minus_new_log_prob(metrics):
    """mean over valid tokens of -log r."""
    expected = sum(-math.log(t[1]) for t in VALID) / N_VALID
    assert metrics["policy/ppo_kl"].item() == pytest.approx(expected)


def test_entropy_mean_is_over_valid_tokens(metrics):
    """(0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.6 + 0.7 + 0.8) / 8 = 0.45; padding's 9.0 is ignored."""
    assert metrics["entropy/mean"].item() == pytest.approx(0.45)


def test_token_counts_per_p_old_bucket(metrics):
    """Valid p: 0.1 0.5 0.9 0.3 0.7 0.05 0.15 0.95 -> buckets [0,.2) 3, [.2,.4) 1, [.4,.6) 1,
    [.6,.8) 1, [.8,1] 2."""
    got = {name: metrics[f"tokens/p_old_{name}"].item() for name in
           ("0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0")}
    assert got == {"0.0-0.2": 3, "0.2-0.4": 1, "0.4-0.6": 1, "0.6-0.8": 1, "0.8-1.0": 2}


def test_gradient_cut_counts_per_p_old_bucket(metrics):
    """Cut tokens have p 0.1, 0.5, 0.9, 0.95 -> [0,.2) 1, [.4,.6) 1, [.8,1] 2."""
    got = {name: metrics[f"clipped/p_old_{name}"].item() for name in
           ("0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0")}
    assert got == {"0.0-0.2": 1, "0.2-0.4": 0, "0.4-0.6": 1, "0.6-0.8": 0, "0.8-1.0": 2}


def test_p_equal_to_one_falls_in_the_top_bucket():
    old = torch.zeros(1, 2)
    new = old.clone()
    m = clip_metrics(ratio=torch.ones(1, 2), lower=torch.full((1, 2), 0.8), upper=torch.full((1, 2), 1.2),
                     advantages=torch.ones(1, 2), old_log_probs=old, log_probs=new, mask=torch.ones(1, 2))
    assert m["tokens/p_old_0.8-1.0"].item() == 2


def test_tensors_are_passed_by_name():
    """Eight tensors of one shape: positional arguments, which could be swapped unnoticed, are refused (the
    seven required ones, so that the error can only be about their being positional)."""
    tensors = [torch.ones(1, 2)] * 7
    with pytest.raises(TypeError, match="takes 0 positional arguments but 7 were given"):
        clip_metrics(*tensors)


def test_bound_means_with_per_token_bounds_exclude_padding():
    """DCPO(0.16, 0.2) on valid p = 1.0 and 0.08 (padding p = 0.002):
    lower mean = (0.8 + 0.5) / 2, upper mean = (0.5 + 0.5 sqrt(1.8) + 0.5 + 0.5 sqrt(11)) / 2."""
    old = torch.log(torch.tensor([[1.0, 0.08, 0.002]], dtype=torch.float64))
    new = old.clone().requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    _, m = policy_loss(new, old, torch.ones(1, dtype=torch.float64), mask, clip=DCPO(0.16, 0.2))
    assert m["bounds/lower_mean"].item() == pytest.approx((0.8 + 0.5) / 2)
    upper = (0.5 + 0.5 * math.sqrt(1.8) + 0.5 + 0.5 * math.sqrt(11.0)) / 2
    assert m["bounds/upper_mean"].item() == pytest.approx(upper)


def test_region_mean_is_the_share_of_tokens_whose_gradient_is_cut():
    """TRL's meaning, checked against autograd: among valid tokens with A != 0, the share whose
    gradient is exactly 0 equals clip_ratio/region_mean."""
    g = torch.Generator().manual_seed(0)
    old = torch.log(torch.rand(6, 40, generator=g, dtype=torch.float64) * 0.97 + 0.02)
    new = (old + (torch.rand(6, 40, generator=g, dtype=torch.float64) - 0.5) * 3).requires_grad_(True)
    advantages = torch.randn(6, 40, generator=g, dtype=torch.float64)
    mask = (torch.rand(6, 40, generator=g) < 0.7).double()
    loss, m = policy_loss(new, old, advantages, mask, clip=Band("kl", 0.05))
    loss.backward()
    valid = mask > 0
    cut = (new.grad == 0) & valid
    assert cut.sum().item() > 0
    assert m["clip_ratio/region_mean"].item() == pytest.approx(cut.sum().item() / valid.sum().item())


# --- types and conversions --------------------------------------------------------------------


def test_metrics_are_detached_zero_dim_tensors(metrics):
    """Tensors, not floats: no host synchronisation inside the loss."""
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor), key
        assert value.dim() == 0, key
        assert not value.requires_grad, key


def test_metrics_to_floats_converts_every_metric_to_a_python_float(metrics):
    floats = metrics_to_floats(metrics)
    assert list(floats) == list(metrics)
    for key, value in floats.items():
        assert type(value) is float
        assert value == pytest.approx(metrics[key].item())


def test_metrics_to_floats_of_nothing_is_empty():
    assert metrics_to_floats({}) == {}


def test_all_zero_mask_gives_finite_zero_metrics():
    new, old, advantages, mask = hand_batch()
    _, m = policy_loss(new, old, advantages, torch.zeros_like(mask), clip=Band(), entropy=torch.ones_like(old))
    floats = metrics_to_floats(m)
    assert all(math.isfinite(v) for v in floats.values())
    assert floats["clip_ratio/region_mean"] == 0.0
    assert floats["clip_ratio/low_p_high_share"] == 0.0
    assert floats["tokens/p_old_0.0-0.2"] == 0.0


def test_no_gradient_cut_gives_zero_low_p_high_share():
    old = torch.log(torch.tensor([[0.1, 0.5]]))
    new = old.clone().requires_grad_(True)
    _, m = policy_loss(new, old, torch.ones(1), torch.ones(1, 2), clip=FixedClip())
    assert m["clip_ratio/low_p_high_share"].item() == 0.0


def test_metrics_ignore_minus_infinity_log_probs_at_masked_positions():
    """Padding with log pi = log pi_old = -inf leaves every metric finite and unchanged."""
    new, old, advantages, mask = hand_batch()
    _, reference = policy_loss(new, old, advantages, mask, clip=FixedClip())
    padded = mask == 0
    old2 = old.masked_fill(padded, -math.inf)
    new2 = new.detach().masked_fill(padded, -math.inf)
    _, m = policy_loss(new2, old2, advantages, mask, clip=FixedClip())
    got, want = metrics_to_floats(m), metrics_to_floats(reference)
    assert got == pytest.approx(want)


def test_dual_clip_share_counts_negative_advantage_tokens_whose_loss_is_capped():
    """c = 3: tokens with A < 0 and max(r, clip(r)) > 3 are capped; A > 0 or r <= 3 are not."""
    ratio = torch.tensor([[4.0, 2.0, 5.0, 3.5]])
    bounds = torch.full_like(ratio, 0.8), torch.full_like(ratio, 1.2)
    advantages = torch.tensor([[-1.0, -1.0, 1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    zeros = torch.zeros_like(ratio)
    tensors = dict(ratio=ratio, lower=bounds[0], upper=bounds[1], advantages=advantages, old_log_probs=zeros,
                   log_probs=zeros, mask=mask)
    assert clip_metrics(**tensors, dual_clip=3.0)["clip_ratio/dual_clip_mean"].item() == pytest.approx(1 / 3)
    assert "clip_ratio/dual_clip_mean" not in clip_metrics(**tensors)


# --- the mechanism split: by side and by p, and the log-ratio of rare tokens by sign of A --------


def test_group_counts(metrics):
    """valid 8, gradient-cut 4; low p (p < 0.2): 3, of which A > 0: 1 and A < 0: 2; high p: 5."""
    counts = {name: metrics[f"tokens/{name}"].item() for name in ("valid", "clipped", "low_p", "high_p",
                                                                    "low_p_pos", "low_p_neg")}
    assert counts == {"valid": 8, "clipped": 4, "low_p": 3, "high_p": 5, "low_p_pos": 1, "low_p_neg": 2}


def test_clipped_share_by_side_within_each_p_group(metrics):
    """low p: none cut below, 1 of 3 cut above (p 0.10); high p: 1 of 5 below (p 0.90), 2 of 5 above."""
    assert metrics["clip_ratio/low_mean_low_p"].item() == 0.0
    assert metrics["clip_ratio/high_mean_low_p"].item() == pytest.approx(1 / 3)
    assert metrics["clip_ratio/low_mean_high_p"].item() == pytest.approx(1 / 5)
    assert metrics["clip_ratio/high_mean_high_p"].item() == pytest.approx(2 / 5)


def test_low_p_log_ratio_by_sign_of_the_advantage(metrics):
    """A > 0: the p 0.10 token rose by r = 1.5 (padding's r = 3 excluded); A < 0: r = 1.1 and r = 2.0."""
    assert metrics["policy/low_p_pos_log_ratio"].item() == pytest.approx(math.log(1.5))
    assert metrics["policy/low_p_neg_log_ratio"].item() == pytest.approx((math.log(1.1) + math.log(2.0)) / 2)


def test_empty_groups_give_zero_not_nan():
    new, old, advantages, mask = hand_batch()
    _, metrics = policy_loss(new, old, advantages.abs(), mask, clip=FixedClip())  # no A < 0 anywhere
    assert metrics["tokens/low_p_neg"].item() == 0
    assert metrics["policy/low_p_neg_log_ratio"].item() == 0.0


def test_every_group_mean_has_a_count_metric_as_denominator(metrics):
    for name, denominator in DENOMINATORS.items():
        assert name in metrics and denominator in metrics and denominator.startswith(COUNT_PREFIXES)


def test_reduce_weights_recombine_shards_into_the_whole_batch():
    """Weighting each mean by its group's count, summing over shards and dividing by the summed count
    gives the metrics of the concatenated batch: what an engine does across processes."""
    new, old, advantages, mask = hand_batch()
    clip = Band("kl", 0.5)
    whole = metrics_to_floats(policy_loss(new, old, advantages, mask, clip=clip)[1])
    shards = [metrics_to_floats(policy_loss(new[i : i + 1], old[i : i + 1], advantages[i : i + 1], mask[i : i + 1],
                                            clip=clip)[1]) for i in range(2)]
    sums: dict[str, float] = {}
    for shard in shards:
        weights = reduce_weights(shard)
        for name, value in shard.items():
            sums[name] = sums.get(name, 0.0) + (value if weights[name] is None else value * weights[name])
    for name, total in sums.items():
        if name.startswith(COUNT_PREFIXES):
            assert total == whole[name], name
        else:
            denominator = sums[DENOMINATORS.get(name, "tokens/valid")]
            assert total / max(denominator, 1.0) == pytest.approx(whole[name], rel=1e-6, abs=1e-9), name  # float32 logging
