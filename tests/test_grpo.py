"""Specification of the other GRPO terms (``bandpo.grpo``), SPEC §3.

    group_advantages   A_i = (R_i - mean_g(R)) / (std_g(R) + eps), rewards grouped consecutively,
                       std with Bessel's correction (torch.std, as TRL/verl GRPO); no division
                       when scale=False
    kl_penalty         x = log pi_ref - log pi:  k1 = -x,  k2 = x^2 / 2,  k3 = e^x - x - 1
    entropy_from_logits  H = -sum_v softmax(z)_v log softmax(z)_v over the last axis
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bandpo import entropy_from_logits, group_advantages, kl_penalty

# --- group_advantages ------------------------------------------------------------------------


def test_group_advantages_hand_values_for_plus_minus_one_rewards():
    """Group (+1, -1, -1, +1): mean 0, std = sqrt(4 / 3), A = +-sqrt(3) / 2 = +-0.8660."""
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0])
    got = group_advantages(rewards, 4)
    a = math.sqrt(3) / 2
    assert got.tolist() == pytest.approx([a, -a, -a, a], rel=1e-5)


def test_group_advantages_normalise_each_group_separately():
    """Groups (1, 2, 3) and (10, 10, 40): means 2 and 20, stds 1 and sqrt(300)."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 40.0], dtype=torch.float64)
    got = group_advantages(rewards, 3, eps=0.0)
    s = math.sqrt(((10 - 20) ** 2 * 2 + (40 - 20) ** 2) / 2)
    expected = [-1.0, 0.0, 1.0, -10 / s, -10 / s, 20 / s]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_group_advantages_add_eps_to_the_std():
    """(0, 2): mean 1, std sqrt(2); eps = 0.5 -> A = -+1 / (sqrt(2) + 0.5)."""
    got = group_advantages(torch.tensor([0.0, 2.0], dtype=torch.float64), 2, eps=0.5)
    a = 1 / (math.sqrt(2) + 0.5)
    assert got.tolist() == pytest.approx([-a, a], rel=1e-12)


def test_group_advantages_without_scale_only_centre():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 40.0])
    got = group_advantages(rewards, 3, scale=False)
    assert got.tolist() == pytest.approx([-1.0, 0.0, 1.0, -10.0, -10.0, 20.0])


def test_group_advantages_of_a_uniform_group_are_zero_not_nan():
    """All rewards equal (std 0): every advantage is 0."""
    got = group_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]), 4)
    assert torch.equal(got, torch.zeros(8))


def test_group_advantages_of_groups_of_one_are_zero():
    got = group_advantages(torch.tensor([0.3, -2.0, 5.0]), 1)
    assert torch.equal(got, torch.zeros(3))


def test_group_advantages_keep_shape_and_dtype():
    for dtype in (torch.float32, torch.float64):
        rewards = torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=dtype)
        got = group_advantages(rewards, 16)
        assert got.shape == (32,) and got.dtype == dtype


def test_group_advantages_have_zero_mean_and_unit_std_per_group():
    rewards = torch.randn(4 * 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = group_advantages(rewards, 16, eps=0.0).view(4, 16)
    assert torch.allclose(got.mean(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(got.std(-1), torch.ones(4, dtype=torch.float64), atol=1e-12)


def test_group_advantages_accept_integer_rewards():
    """Verifier rewards are often integers (+1 / -1) or bools: same result as float rewards."""
    as_int = group_advantages(torch.tensor([1, -1, -1, 1]), 4)
    as_float = group_advantages(torch.tensor([1.0, -1.0, -1.0, 1.0]), 4)
    assert torch.allclose(as_int.float(), as_float)


@pytest.mark.parametrize(
    "rewards, group_size",
    [
        (torch.ones(2, 4), 4),  # not 1-D
        (torch.ones(6), 4),  # not divisible
        (torch.ones(6), 0),  # empty groups
        (torch.ones(6), -3),
    ],
)
def test_group_advantages_reject_bad_shapes(rewards, group_size):
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(rewards, group_size)


# --- kl_penalty ------------------------------------------------------------------------------

LOGP = torch.tensor([-0.5, -2.0, -1.0], dtype=torch.float64)
REF = torch.tensor([-1.0, -1.0, -1.0], dtype=torch.float64)  # x = ref - logp = (-0.5, 1.0, 0.0)


def test_k1_is_log_pi_minus_log_ref():
    assert kl_penalty(LOGP, REF, "k1").tolist() == pytest.approx([0.5, -1.0, 0.0])


def test_k2_is_half_the_squared_log_ratio():
    assert kl_penalty(LOGP, REF, "k2").tolist() == pytest.approx([0.125, 0.5, 0.0])


def test_k3_is_exp_x_minus_x_minus_one():
    expected = [math.exp(-0.5) + 0.5 - 1, math.e - 1 - 1, 0.0]
    assert kl_penalty(LOGP, REF, "k3").tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_k3_is_the_default_estimator():
    assert torch.equal(kl_penalty(LOGP, REF), kl_penalty(LOGP, REF, "k3"))


def test_k3_is_non_negative_and_zero_only_where_the_policies_agree():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(10_000, generator=g, dtype=torch.float64) * 10
    ref = -torch.rand(10_000, generator=g, dtype=torch.float64) * 10
    assert torch.all(kl_penalty(logp, ref, "k3") > 0)
    assert torch.all(kl_penalty(logp, logp, "k3") == 0)


def test_k3_and_k1_estimate_kl_on_samples_from_pi():
    """Tokens a ~ pi: mean k1 and mean k3 -> KL(pi || ref) = sum pi log(pi / ref) (5 sigma)."""
    g = torch.Generator().manual_seed(0)
    log_pi = torch.log_softmax(torch.randn(8, generator=g, dtype=torch.float64), -1)
    log_ref = torch.log_softmax(torch.randn(8, generator=g, dtype=torch.float64), -1)
    exact = float((log_pi.exp() * (log_pi - log_ref)).sum())
    samples = torch.multinomial(log_pi.exp(), 200_000, replacement=True, generator=g)
    for estimator in ("k1", "k3"):
        values = kl_penalty(log_pi[samples], log_ref[samples], estimator)
        tolerance = 5 * values.std().item() / math.sqrt(values.numel())
        assert abs(values.mean().item() - exact) < tolerance, estimator


def test_kl_penalty_is_differentiable_in_log_pi():
    """d k3 / d log pi = 1 - e^x  (x = log ref - log pi)."""
    logp = LOGP.clone().requires_grad_(True)
    kl_penalty(logp, REF, "k3").sum().backward()
    x = (REF - LOGP).tolist()
    assert logp.grad.tolist() == pytest.approx([1 - math.exp(v) for v in x])


@pytest.mark.parametrize("estimator", ["k4", "K3", "low_var_kl", ""])
def test_kl_penalty_rejects_unknown_estimator(estimator):
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(LOGP, REF, estimator)


# --- entropy_from_logits ---------------------------------------------------------------------


def direct_entropy(logits: np.ndarray) -> np.ndarray:
    """-sum p log p with p = softmax(z), in float64 numpy (terms with p = 0 count 0)."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(-1)


def test_entropy_matches_a_direct_computation():
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    got = entropy_from_logits(logits)
    assert got.shape == (3, 5)
    assert np.allclose(got.numpy(), direct_entropy(logits.numpy()), rtol=1e-12, atol=1e-12)


def test_entropy_float32_matches_a_direct_computation():
    logits = torch.randn(4, 7, 50, generator=torch.Generator().manual_seed(1)) * 5
    got = entropy_from_logits(logits)
    assert got.dtype == torch.float32
    assert np.allclose(got.numpy(), direct_entropy(logits.double().numpy()), atol=1e-5)


def test_entropy_of_uniform_logits_is_log_vocab_size():
    assert entropy_from_logits(torch.zeros(2, 32)).tolist() == pytest.approx([math.log(32)] * 2)


def test_entropy_of_a_near_one_hot_distribution_is_near_zero():
    logits = torch.tensor([[50.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert 0 <= entropy_from_logits(logits).item() < 1e-18


def test_entropy_is_invariant_to_shifting_the_logits():
    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(entropy_from_logits(logits + 100.0), entropy_from_logits(logits))


def test_entropy_ignores_masked_out_vocabulary_entries():
    """Logits of -inf (top-k / vocabulary masking) are tokens of probability 0: H(0, 0, -inf) = log 2."""
    logits = torch.tensor([[0.0, 0.0, -math.inf], [1.0, -math.inf, 2.0]], dtype=torch.float64)
    expected = direct_entropy(np.array([[0.0, 0.0, -np.inf], [1.0, -np.inf, 2.0]]))
    got = entropy_from_logits(logits)
    assert torch.isfinite(got).all()
    assert np.allclose(got.numpy(), expected)
