"""Specification of the BandPO policy loss (``bandpo.policy_loss``), SPEC §3.

Per valid token t with advantage A_t, r_t = exp(log pi_t - log pi_old_t) and rule bounds [l_t, u_t]:

    loss_t = max(-A_t r_t, -A_t clip(r_t, l_t, u_t))           (bounds carry no gradient)
    dual clip c > 1, A_t < 0:  loss_t = min(loss_t, -c A_t)

    d loss_t / d log pi_t = -A_t r_t   where the unclipped term is active,
                          = 0          where the gradient is cut (r > u with A > 0, r < l with A < 0,
                                       or the dual-clip cap -c A with A < 0).

Batches are built from chosen (p_old, r) pairs: old = log p_old, new = old + log r.
"""

from __future__ import annotations

import math

import pytest
import torch

from bandpo import DCPO, LOSS_AGG_MODES, Band, FixedClip, per_token_policy_loss, policy_loss
from bandpo.metrics import metrics_to_floats


def batch(p_old, ratio, dtype=torch.float64):
    """(log_probs with requires_grad, old_log_probs) with exp(new - old) = ratio."""
    old = torch.log(torch.tensor(p_old, dtype=dtype))
    new = (old + torch.log(torch.tensor(ratio, dtype=dtype))).detach().requires_grad_(True)
    return new, old


def textbook_ppo_token_mean(log_probs, old_log_probs, advantages, mask, eps_low, eps_high):
    """PPO's clipped objective, written out independently:

        L = -mean_valid min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)
    """
    ratio = torch.exp(log_probs - old_log_probs)
    surrogate = ratio * advantages
    clipped_surrogate = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    objective = torch.min(surrogate, clipped_surrogate)
    return -(objective * mask).sum() / mask.sum()


def random_batch(seed, shape=(4, 7), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(shape, generator=g, dtype=dtype) * 0.97 + 0.02)
    # log-ratios spread over [-0.7, 0.7] so that plenty of tokens fall outside [0.8, 1.2].
    new = (old + (torch.rand(shape, generator=g, dtype=dtype) - 0.5) * 1.4).requires_grad_(True)
    advantages = torch.randn(shape, generator=g, dtype=dtype)
    mask = (torch.rand(shape, generator=g) < 0.8).to(dtype)
    mask[:, 0] = 1.0
    return new, old, advantages, mask


# --- the per-token loss ----------------------------------------------------------------------


def test_per_token_loss_hand_values():
    """l = 0.8, u = 1.2:
    A=+1 r=1.5 -> max(-1.5, -1.2) = -1.2     A=-1 r=0.5 -> max(0.5, 0.8) = 0.8
    A=+1 r=0.5 -> max(-0.5, -0.8) = -0.5     A=-1 r=1.5 -> max(1.5, 1.2) = 1.5
    A=+2 r=1.1 -> -2.2                       A=-0.5 r=0.9 -> 0.45
    """
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.1, 0.9], dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -0.5], dtype=torch.float64)
    lower, upper = torch.full_like(ratio, 0.8), torch.full_like(ratio, 1.2)
    got = per_token_policy_loss(ratio, lower, upper, advantages)
    assert got.tolist() == pytest.approx([-1.2, 0.8, -0.5, 1.5, -2.2, 0.45])


def test_per_token_loss_uses_each_tokens_own_bounds():
    """Token 0: [0.5, 3] -> r = 2 inside, -A r = -2;  token 1: [0.9, 1.1] -> clipped, -A u = -1.1."""
    ratio = torch.tensor([2.0, 2.0], dtype=torch.float64)
    got = per_token_policy_loss(
        ratio,
        torch.tensor([0.5, 0.9], dtype=torch.float64),
        torch.tensor([3.0, 1.1], dtype=torch.float64),
        torch.tensor([1.0, 1.0], dtype=torch.float64),
    )
    assert got.tolist() == pytest.approx([-2.0, -1.1])


def test_dual_clip_caps_negative_advantage_loss_at_minus_c_a():
    """c = 3, A = -1: r = 5 -> min(5, 3) = 3;  r = 2 -> 2 (below the cap);  A = +1, r = 5 -> -1.2."""
    ratio = torch.tensor([5.0, 2.0, 5.0], dtype=torch.float64)
    advantages = torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)
    lower, upper = torch.full_like(ratio, 0.8), torch.full_like(ratio, 1.2)
    got = per_token_policy_loss(ratio, lower, upper, advantages, dual_clip=3.0)
    assert got.tolist() == pytest.approx([3.0, 2.0, -1.2])


# --- gradient: zero exactly where clipped ----------------------------------------------------

# (p_old, r, A): clipped above, clipped below, four unclipped tokens.
CASES = [
    (0.5, 1.5, 1.0),   # r > u, A > 0: cut
    (0.5, 0.5, -1.0),  # r < l, A < 0: cut
    (0.5, 0.5, 1.0),   # r < l, A > 0: -A r is the larger term, gradient flows
    (0.5, 1.5, -1.0),  # r > u, A < 0: gradient flows (no dual clip)
    (0.3, 1.1, 2.0),   # inside
    (0.9, 0.9, -0.5),  # inside
]


def cases_batch():
    p, r, a = zip(*CASES, strict=True)
    new, old = batch([p], [r])
    return new, old, torch.tensor([a], dtype=torch.float64), torch.ones(1, len(CASES), dtype=torch.float64)


def test_gradient_is_exactly_zero_on_clipped_tokens():
    """r > u with A > 0 and r < l with A < 0: d loss / d log pi = 0 exactly."""
    new, old, advantages, mask = cases_batch()
    loss, _ = policy_loss(new, old, advantages, mask, clip=FixedClip(0.2, 0.2))
    loss.backward()
    assert new.grad[0, 0].item() == 0.0
    assert new.grad[0, 1].item() == 0.0


def test_gradient_is_minus_a_r_over_n_on_unclipped_tokens():
    """Token-mean over N = 6 tokens: d loss / d log pi_t = -A_t r_t / 6, nonzero."""
    new, old, advantages, mask = cases_batch()
    loss, _ = policy_loss(new, old, advantages, mask, clip=FixedClip(0.2, 0.2))
    loss.backward()
    expected = [-a * r / 6 for _, r, a in CASES[2:]]
    assert new.grad[0, 2:].tolist() == pytest.approx(expected, rel=1e-12)
    assert torch.all(new.grad[0, 2:] != 0)


def test_loss_value_on_the_hand_built_cases():
    """Token-mean of (-1.2, 0.8, -0.5, 1.5, -2.2, 0.45) = -1.15 / 6."""
    new, old, advantages, mask = cases_batch()
    loss, _ = policy_loss(new, old, advantages, mask, clip=FixedClip(0.2, 0.2))
    assert loss.item() == pytest.approx(-1.15 / 6, rel=1e-12)


def test_dual_clip_zeroes_the_gradient_where_the_cap_binds():
    """c = 3: A = -1, r = 5 -> loss 3 = -c A, gradient 0; A = -1, r = 2 -> loss 2, gradient +2 / N."""
    new, old = batch([[0.1, 0.1, 0.1]], [[5.0, 2.0, 5.0]])
    advantages = torch.tensor([[-1.0, -1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.float64)
    loss, _ = policy_loss(new, old, advantages, mask, clip=FixedClip(), dual_clip=3.0)
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3, rel=1e-12)
    loss.backward()
    assert new.grad[0, 0].item() == 0.0
    assert new.grad[0, 1].item() == pytest.approx(2.0 / 3, rel=1e-12)
    assert new.grad[0, 2].item() == 0.0  # A > 0, r > u: the ordinary upper clip


def test_dual_clip_leaves_positive_advantages_untouched():
    new, old, advantages, mask = random_batch(3)
    advantages = advantages.abs()
    with_dual, _ = policy_loss(new, old, advantages, mask, clip=FixedClip(), dual_clip=1.5)
    without, _ = policy_loss(new, old, advantages, mask, clip=FixedClip())
    assert with_dual.item() == without.item()


# --- FixedClip is textbook PPO ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)])
def test_fixed_clip_matches_textbook_ppo_value_and_gradient(seed, eps):
    new, old, advantages, mask = random_batch(seed)
    loss, _ = policy_loss(new, old, advantages, mask, clip=FixedClip(*eps))
    (grad,) = torch.autograd.grad(loss, new)
    reference = textbook_ppo_token_mean(new, old, advantages, mask, *eps)
    (reference_grad,) = torch.autograd.grad(reference, new)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12, abs=1e-15)
    assert torch.allclose(grad, reference_grad, rtol=1e-12, atol=1e-15)


# --- Band ------------------------------------------------------------------------------------


def test_band_with_a_huge_delta_never_clips():
    """delta = 1e3 (the top of the accepted range), no cap: [l, u] ~ [0, 1/p] holds every reachable ratio q/p (q < 1), so
    the loss is -mean(A r), every clip metric is 0 and the gradient is -A r / N."""
    g = torch.Generator().manual_seed(7)
    shape = (3, 50)
    p = torch.rand(shape, generator=g, dtype=torch.float64) * 0.96 + 0.02
    q = torch.rand(shape, generator=g, dtype=torch.float64) * 0.94 + 0.01
    new, old = batch(p.tolist(), (q / p).tolist(), dtype=torch.float32)
    advantages = torch.randn(shape, generator=g).sign()
    mask = torch.ones(shape)
    loss, metrics = policy_loss(new, old, advantages, mask, clip=Band("kl", 1e3, upper_max=None))
    loss.backward()
    ratio = torch.exp(new.detach() - old)
    assert loss.item() == pytest.approx((-(advantages * ratio)).mean().item(), rel=1e-5)
    assert torch.allclose(new.grad, -advantages * ratio / ratio.numel(), rtol=1e-5, atol=0)
    floats = metrics_to_floats(metrics)
    for key in ("low_mean", "high_mean", "region_mean", "out_of_band"):
        assert floats[f"clip_ratio/{key}"] == 0.0


def test_band_kl_clips_a_tail_token_less_than_fixed_clip():
    """p = 0.08, r = 2 (A > 0): FixedClip(0.2) cuts it at 1.2; Band(kl, 0.05) allows up to 2.411."""
    new, old = batch([[0.08]], [[2.0]])
    advantages, mask = torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    band_loss, _ = policy_loss(new, old, advantages, mask, clip=Band())
    clip_loss, _ = policy_loss(new, old, advantages, mask, clip=FixedClip())
    assert band_loss.item() == pytest.approx(-2.0, rel=1e-9)
    assert clip_loss.item() == pytest.approx(-1.2, rel=1e-9)


def test_band_clips_at_the_band_upper_bound():
    """p = 0.08, r = 3 > 2.411 = upper(kl, 0.05), A = +1: loss = -u = -2.411, gradient 0."""
    new, old = batch([[0.08]], [[3.0]])
    advantages, mask = torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    loss, _ = policy_loss(new, old, advantages, mask, clip=Band())
    loss.backward()
    assert loss.item() == pytest.approx(-2.411, abs=5e-4)
    assert new.grad.item() == 0.0


def test_old_log_probs_get_no_gradient():
    """Neither the ratio's denominator nor the bounds pass gradient to old_log_probs."""
    new, old, advantages, mask = random_batch(1)
    old.requires_grad_(True)
    loss, _ = policy_loss(new, old, advantages, mask, clip=Band())
    loss.backward()
    assert old.grad is None
    assert new.grad is not None


class DifferentiableRule:
    """A rule whose bounds (wrongly) carry autograd history from a parameter."""

    def __init__(self):
        self.width = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    def bounds(self, old_log_probs):
        ones = torch.ones_like(old_log_probs)
        return ones * (1 - self.width), ones * (1 + self.width)


def test_bounds_history_is_cut_by_the_loss():
    """Even a rule returning differentiable bounds gets no gradient, and the loss/gradient
    equal FixedClip(0.2, 0.2)'s."""
    new, old, advantages, mask = random_batch(2)
    rule = DifferentiableRule()
    loss, _ = policy_loss(new, old, advantages, mask, clip=rule)
    (grad,) = torch.autograd.grad(loss, new, retain_graph=True)
    assert rule.width.grad is None
    loss.backward()
    assert rule.width.grad is None
    reference, _ = policy_loss(new, old, advantages, mask, clip=FixedClip(0.2, 0.2))
    (reference_grad,) = torch.autograd.grad(reference, new)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    assert torch.allclose(grad, reference_grad)


@pytest.mark.parametrize("rule", [Band(), FixedClip(), DCPO()], ids=["band", "clip", "dcpo"])
def test_on_policy_ratio_one_is_never_clipped(rule):
    """r = 1 (single on-policy update): loss = -mean(A), gradient -A / N for every rule."""
    new, old, advantages, mask = random_batch(4)
    new = old.clone().requires_grad_(True)
    loss, metrics = policy_loss(new, old, advantages, mask, clip=rule)
    loss.backward()
    n = mask.sum()
    assert loss.item() == pytest.approx((-(advantages * mask).sum() / n).item(), rel=1e-9)
    assert torch.allclose(new.grad, -advantages * mask / n)
    assert metrics["clip_ratio/region_mean"].item() == 0.0


# --- masks, shapes, padding ------------------------------------------------------------------


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("rule", [Band(), FixedClip()], ids=["band", "clip"])
def test_all_zero_mask_gives_zero_loss_finite_gradient_and_metrics(mode, rule):
    new, old, advantages, _ = random_batch(5)
    mask = torch.zeros_like(old)
    loss, metrics = policy_loss(new, old, advantages, mask, clip=rule, loss_agg_mode=mode, entropy=torch.ones_like(old))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(new.grad, torch.zeros_like(new))
    floats = metrics_to_floats(metrics)
    assert all(math.isfinite(value) for value in floats.values()), floats


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_zero_length_sequences_give_zero_loss_without_a_loss_agg_constant(mode):
    """T = 0 with no loss_agg_constant passed: loss 0 and finite metrics (issue 17, reproducer 12: the
    sum-norm mode said "loss_agg_constant ... got None", a value the user never gave)."""
    new = torch.zeros(4, 0, dtype=torch.float64, requires_grad=True)
    old, mask = torch.zeros(4, 0, dtype=torch.float64), torch.zeros(4, 0, dtype=torch.float64)
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    loss, metrics = policy_loss(new, old, advantages, mask, clip=Band(), loss_agg_mode=mode)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, new)
    assert grad.shape == (4, 0)
    floats = metrics_to_floats(metrics)
    assert all(math.isfinite(value) for value in floats.values()), floats


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_per_sequence_and_per_token_advantages_agree(mode):
    """advantages (B,) equal to (B, T) broadcast over tokens give the same loss, gradient, metrics."""
    new, old, _, mask = random_batch(6)
    per_sequence = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    per_token = per_sequence[:, None].expand_as(old).clone()
    loss_a, metrics_a = policy_loss(new, old, per_sequence, mask, clip=Band(), loss_agg_mode=mode)
    (grad_a,) = torch.autograd.grad(loss_a, new)
    loss_b, metrics_b = policy_loss(new, old, per_token, mask, clip=Band(), loss_agg_mode=mode)
    (grad_b,) = torch.autograd.grad(loss_b, new)
    assert loss_a.item() == loss_b.item()
    assert torch.equal(grad_a, grad_b)
    assert metrics_to_floats(metrics_a) == metrics_to_floats(metrics_b)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_bool_and_float_masks_agree(mode):
    new, old, advantages, mask = random_batch(8)
    loss_f, metrics_f = policy_loss(new, old, advantages, mask, clip=Band(), loss_agg_mode=mode)
    (grad_f,) = torch.autograd.grad(loss_f, new)
    loss_b, metrics_b = policy_loss(new, old, advantages, mask.bool(), clip=Band(), loss_agg_mode=mode)
    (grad_b,) = torch.autograd.grad(loss_b, new)
    assert loss_f.item() == loss_b.item()
    assert torch.equal(grad_f, grad_b)
    assert metrics_to_floats(metrics_f) == metrics_to_floats(metrics_b)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_values_at_masked_positions_do_not_change_the_loss(mode):
    """Finite garbage (here: ratio e^5, flipped advantages) at masked tokens is ignored."""
    new, old, advantages, mask = random_batch(9)
    loss, _ = policy_loss(new, old, advantages, mask, clip=Band(), loss_agg_mode=mode)
    padded = mask == 0
    new2 = torch.where(padded, old + 5.0, new.detach()).requires_grad_(True)
    advantages2 = torch.where(padded, -advantages * 10, advantages)
    loss2, _ = policy_loss(new2, old, advantages2, mask, clip=Band(), loss_agg_mode=mode)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_minus_infinity_log_probs_at_masked_positions_do_not_poison_the_loss(mode):
    """log pi = log pi_old = -inf (p = 0) is a legal log-probability; at masked positions it must
    leave the loss and its gradient unchanged and finite (the mask means 'ignore this token')."""
    new, old, advantages, mask = random_batch(10)
    loss, _ = policy_loss(new, old, advantages, mask, clip=FixedClip(), loss_agg_mode=mode)
    (grad,) = torch.autograd.grad(loss, new)
    padded = mask == 0
    minus_inf = torch.full_like(old, -math.inf)
    old2 = torch.where(padded, minus_inf, old)
    new2 = torch.where(padded, minus_inf, new.detach()).requires_grad_(True)
    loss2, _ = policy_loss(new2, old2, advantages, mask, clip=FixedClip(), loss_agg_mode=mode)
    (grad2,) = torch.autograd.grad(loss2, new2)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12)
    assert torch.equal(grad2, grad)


PADDING_VALUES = {"+inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def fill_padding(tensor, mask, value):
    return torch.where(mask == 0, torch.full_like(tensor, value), tensor.detach())


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("value", PADDING_VALUES.values(), ids=PADDING_VALUES.keys())
@pytest.mark.parametrize("filled", ["advantages", "log_probs", "old_log_probs", "entropy", "all"])
def test_padding_contributes_nothing_whatever_it_holds(filled, value, mode):
    """+-inf or NaN at masked positions of any input leave the loss, its gradient and every metric
    exactly those of clean padding (issue 17, reproducer 8: +inf advantages gave a NaN loss)."""
    new, old, advantages, mask = random_batch(14)
    entropy = torch.full_like(old, 0.5)
    clean = {"log_probs": new, "old_log_probs": old, "advantages": advantages, "entropy": entropy}
    dirty = {name: fill_padding(tensor, mask, value) if filled in (name, "all") else tensor.detach()
             for name, tensor in clean.items()}
    dirty["log_probs"].requires_grad_(True)
    results = []
    for inputs in (clean, dirty):
        loss, metrics = policy_loss(**inputs, mask=mask, clip=Band(), loss_agg_mode=mode, dual_clip=3.0)
        (grad,) = torch.autograd.grad(loss, inputs["log_probs"])
        results.append((loss, grad, metrics_to_floats(metrics)))
    (loss, grad, metrics), (dirty_loss, dirty_grad, dirty_metrics) = results
    assert (mask == 0).sum() >= 4 and torch.isfinite(dirty_loss)
    assert dirty_loss.item() == loss.item()
    assert torch.equal(dirty_grad, grad)
    assert dirty_metrics == metrics


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_per_sequence_advantage_of_an_empty_sequence_may_be_infinite(mode):
    """A (B,) advantage of a sequence without valid tokens (0/0 normalisation upstream) is ignored."""
    new, old, _, mask = random_batch(15)
    mask[2] = 0.0
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    loss, _ = policy_loss(new, old, advantages, mask, clip=Band(), loss_agg_mode=mode)
    for value in PADDING_VALUES.values():
        advantages[2] = value
        dirty_loss, _ = policy_loss(new, old, advantages, mask, clip=Band(), loss_agg_mode=mode)
        assert dirty_loss.item() == loss.item()


def test_extreme_log_ratios_give_a_finite_loss_and_gradient():
    """|log r| is clamped at 20 before exp: log r = +-100 stays finite."""
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float32))
    new = (old + torch.tensor([[100.0, -100.0, 100.0, -100.0]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, metrics = policy_loss(new, old, advantages, torch.ones(1, 4), clip=Band())
    loss.backward()
    assert math.isfinite(loss.item())
    assert torch.isfinite(new.grad).all()
    assert all(math.isfinite(v) for v in metrics_to_floats(metrics).values())


def test_float32_inputs_give_a_float32_loss():
    new, old, advantages, mask = random_batch(11, dtype=torch.float32)
    loss, _ = policy_loss(new, old, advantages, mask, clip=Band())
    assert loss.dtype == torch.float32 and loss.dim() == 0


def test_entropy_is_reported_only_when_given():
    new, old, advantages, mask = random_batch(12)
    _, without = policy_loss(new, old, advantages, mask, clip=Band())
    _, with_entropy = policy_loss(new, old, advantages, mask, clip=Band(), entropy=torch.full_like(old, 0.25))
    assert "entropy/mean" not in without
    assert with_entropy["entropy/mean"].item() == pytest.approx(0.25)


# --- errors ----------------------------------------------------------------------------------


def valid_inputs():
    new, old, advantages, mask = random_batch(13)
    return dict(log_probs=new, old_log_probs=old, advantages=advantages, mask=mask, clip=FixedClip())


def test_log_probs_must_be_two_dimensional():
    inputs = valid_inputs()
    inputs["log_probs"] = inputs["log_probs"].reshape(-1)
    with pytest.raises(ValueError, match="log_probs"):
        policy_loss(**inputs)


@pytest.mark.parametrize("name", ["old_log_probs", "mask"])
def test_old_log_probs_and_mask_must_match_log_probs_shape(name):
    inputs = valid_inputs()
    inputs[name] = inputs[name][:, :-1]
    with pytest.raises(ValueError, match=name):
        policy_loss(**inputs)


@pytest.mark.parametrize("shape", [(3,), (4, 1), (4, 6), (7,), ()])
def test_advantages_must_be_per_sequence_or_per_token(shape):
    inputs = valid_inputs()
    inputs["advantages"] = torch.ones(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(**inputs)


def test_nan_advantages_on_valid_tokens_are_rejected():
    inputs = valid_inputs()
    inputs["advantages"] = inputs["advantages"].clone()
    valid_token = inputs["mask"].nonzero()[-1].tolist()
    inputs["advantages"][tuple(valid_token)] = math.nan
    with pytest.raises(ValueError, match=r"advantages contain NaN on valid tokens \(mask != 0\)"):
        policy_loss(**inputs)


@pytest.mark.parametrize("mode", ["token_mean", "seq-mean", "sum", ""])
def test_unknown_loss_agg_mode_is_rejected(mode):
    with pytest.raises(ValueError, match="loss_agg_mode"):
        policy_loss(**valid_inputs(), loss_agg_mode=mode)


@pytest.mark.parametrize("dual_clip", [1.0, 0.5, 0.0, -3.0, math.inf, math.nan, "10", True])
def test_dual_clip_must_be_a_finite_number_above_one(dual_clip):
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(**valid_inputs(), dual_clip=dual_clip)


@pytest.mark.parametrize("clip", [None, 0.2, (0.8, 1.2), "band"])
def test_clip_without_bounds_method_is_rejected(clip):
    inputs = valid_inputs()
    inputs["clip"] = clip
    with pytest.raises(ValueError, match="clip"):
        policy_loss(**inputs)
