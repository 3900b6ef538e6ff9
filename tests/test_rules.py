"""Specification of the bound rules (``bandpo.rules``): where each token's ratio is clipped.

A rule maps old log-probabilities to (lower, upper) ratio bounds shaped like its input, with no
autograd history (SPEC §3, §4). Expected values are computed here in plain Python (``math``) or
taken from the reference values of SPEC §2.1, never from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

import bandpo.rules
from bandpo import CLIP_METHODS, DCPO, Band, BoundRule, FixedClip, Sided, band, make_rule
from bandpo.rules import CLIP_METHOD_TABLE, rule_table_markdown


def log_p(*probabilities: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.log(torch.tensor(probabilities, dtype=dtype))


def dcpo_lower(p: float, eps_low: float) -> float:
    """lower = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / p, 0))   (SPEC §4)."""
    return 0.5 + 0.5 * math.sqrt(max(1.0 - 4.0 * eps_low / p, 0.0))


def dcpo_upper(p: float, eps_high: float, upper_max: float | None) -> float:
    """upper = min(1/2 + 1/2 sqrt(1 + 4 eps_high / p), upper_max)   (SPEC §4)."""
    value = 0.5 + 0.5 * math.sqrt(1.0 + 4.0 * eps_high / p)
    return value if upper_max is None else min(value, upper_max)


ALL_RULES = [
    pytest.param(Band(), id="band-kl"),
    pytest.param(Band("tv", 0.1), id="band-tv"),
    pytest.param(Band(relax=(0.2, 0.28)), id="band-relax"),
    pytest.param(make_rule("band-upper"), id="band-upper"),
    pytest.param(make_rule("band-lower"), id="band-lower"),
    pytest.param(FixedClip(), id="clip"),
    pytest.param(DCPO(), id="dcpo"),
]


# --- FixedClip -------------------------------------------------------------------------------


def test_fixed_clip_bounds_are_one_minus_eps_low_and_one_plus_eps_high():
    """FixedClip(eps_low, eps_high): lower = 1 - eps_low, upper = 1 + eps_high for every token."""
    lower, upper = FixedClip(0.2, 0.28).bounds(log_p(0.01, 0.5, 1.0))
    assert lower.tolist() == pytest.approx([0.8, 0.8, 0.8])
    assert upper.tolist() == pytest.approx([1.28, 1.28, 1.28])


def test_fixed_clip_defaults_are_ppo_0_2_and_0_2():
    """FixedClip() is PPO/GRPO's [0.8, 1.2]."""
    lower, upper = FixedClip().bounds(log_p(0.3))
    assert (lower.item(), upper.item()) == pytest.approx((0.8, 1.2))


def test_fixed_clip_bounds_do_not_depend_on_p():
    lower, upper = FixedClip(0.1, 0.3).bounds(log_p(1e-8, 0.08, 0.999, 1.0))
    assert torch.all(lower == lower[0]) and torch.all(upper == upper[0])


# --- DCPO ------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.9, 1.0])
def test_dcpo_lower_is_half_plus_half_sqrt_of_one_minus_four_eps_low_over_p(p):
    """lower = 0.5 + 0.5 sqrt(max(1 - 4 eps_low / p, 0)); 0.5 once 4 eps_low >= p."""
    lower, _ = DCPO(eps_low=0.16, eps_high=0.2).bounds(log_p(p))
    assert lower.item() == pytest.approx(dcpo_lower(p, 0.16), abs=1e-7)


def test_dcpo_lower_hand_values():
    """p = 1: 0.5 + 0.5 sqrt(1 - 0.64) = 0.8;  p = 0.5: 1 - 1.28 < 0, so 0.5."""
    lower, _ = DCPO(eps_low=0.16, eps_high=0.2).bounds(log_p(1.0, 0.5))
    assert lower.tolist() == pytest.approx([0.8, 0.5], abs=1e-12)


@pytest.mark.parametrize("p", [0.002, 0.01, 0.08, 0.5, 1.0])
def test_dcpo_upper_is_half_plus_half_sqrt_of_one_plus_four_eps_high_over_p_capped(p):
    """upper = min(0.5 + 0.5 sqrt(1 + 4 eps_high / p), upper_max = 10)."""
    _, upper = DCPO(eps_low=0.16, eps_high=0.2, upper_max=10.0).bounds(log_p(p))
    assert upper.item() == pytest.approx(dcpo_upper(p, 0.2, 10.0), rel=1e-9)


def test_dcpo_upper_hand_values_and_cap():
    """p = 0.08: 0.5 + 0.5 sqrt(11) = 2.1583;  p = 0.002: 0.5 + 0.5 sqrt(401) = 10.51 -> cap 10."""
    _, capped = DCPO(eps_low=0.16, eps_high=0.2).bounds(log_p(0.08, 0.002))
    _, uncapped = DCPO(eps_low=0.16, eps_high=0.2, upper_max=None).bounds(log_p(0.08, 0.002))
    assert capped.tolist() == pytest.approx([0.5 + 0.5 * 11**0.5, 10.0], rel=1e-9)
    assert uncapped.tolist() == pytest.approx([0.5 + 0.5 * 11**0.5, 0.5 + 0.5 * 401**0.5], rel=1e-9)


def test_dcpo_defaults_are_the_published_0_16_0_20_cap_10():
    rule = DCPO()
    assert (rule.eps_low, rule.eps_high, rule.upper_max) == (0.16, 0.20, 10.0)


# --- Band ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p, expected",
    [(0.08, (0.12306, 3.16885)), (0.5, (0.57424, 1.42576)), (0.9, (0.79736, 1.09271))],
)
def test_band_kl_delta_0_1_matches_reference_values(p, expected):
    """SPEC §2.1 reference values for kl with delta = 0.1 (no cap)."""
    lower, upper = Band("kl", 0.1, upper_max=None).bounds(log_p(p))
    assert (lower.item(), upper.item()) == pytest.approx(expected, abs=1e-5)


def test_band_default_is_kl_delta_0_05_with_upper_max_10():
    """Band(): p = 0.08 -> (0.262, 2.411) (SPEC §2.1); p = 1e-3 -> upper ~ 53.5 capped at 10."""
    rule = Band()
    assert (rule.divergence, rule.delta, rule.upper_max) == ("kl", 0.05, 10.0)
    lower, upper = rule.bounds(log_p(0.08, 1e-3))
    assert lower[0].item() == pytest.approx(0.262, abs=5e-4)
    assert upper[0].item() == pytest.approx(2.411, abs=5e-4)
    assert upper[1].item() == 10.0


@pytest.mark.parametrize("p", [0.08, 0.3, 0.9])
def test_band_tv_is_one_plus_minus_delta_over_p(p):
    """tv: r = 1 -/+ delta / p clamped to [0, 1/p]; p = 0.08, delta 0.05 -> (0.375, 1.625)."""
    delta = 0.05
    lower, upper = Band("tv", delta, upper_max=None).bounds(log_p(p))
    assert lower.item() == pytest.approx(max(1 - delta / p, 0.0), rel=1e-12)
    assert upper.item() == pytest.approx(min(1 + delta / p, 1 / p), rel=1e-12)


@pytest.mark.parametrize("p", [0.08, 0.3, 0.9])
def test_band_chi2_is_one_plus_minus_sqrt_delta_one_minus_p_over_p(p):
    """chi2: r = 1 -/+ sqrt(delta (1 - p) / p); p = 0.08, delta 0.05 -> (0.242, 1.758)."""
    delta = 0.05
    reach = math.sqrt(delta * (1 - p) / p)
    lower, upper = Band("chi2", delta, upper_max=None).bounds(log_p(p))
    assert lower.item() == pytest.approx(max(1 - reach, 0.0), rel=1e-12)
    assert upper.item() == pytest.approx(min(1 + reach, 1 / p), rel=1e-12)


def test_band_upper_max_caps_the_upper_bound_and_none_removes_the_cap():
    """tv, delta 0.05, p = 1e-3: upper = 1 + 50 = 51 uncapped, min(51, 10) = 10 with the cap."""
    _, capped = Band("tv", 0.05, upper_max=10.0).bounds(log_p(1e-3))
    _, uncapped = Band("tv", 0.05, upper_max=None).bounds(log_p(1e-3))
    assert capped.item() == 10.0
    assert uncapped.item() == pytest.approx(51.0, rel=1e-12)


@pytest.mark.parametrize("delta", [0.05, 0.5, 5.0, 50.0])
def test_band_kl_at_p_one_is_exp_minus_delta_and_one(delta):
    """A token with old log-prob 0 (p = 1, common in float32) gets (exp(-delta), 1) — finite."""
    lower, upper = Band("kl", delta).bounds(torch.zeros(2))
    assert lower.tolist() == pytest.approx([math.exp(-delta)] * 2, rel=1e-5)
    assert upper.tolist() == [1.0, 1.0]


def test_band_bounds_follow_the_divergence_object_or_name():
    """Band accepts a divergence name; the same name gives the same bounds as bandpo.band."""
    from bandpo import band

    x = log_p(0.01, 0.2, 0.7)
    for name in ("kl", "tv", "chi2"):
        got = Band(name, 0.1, upper_max=None).bounds(x)
        want = band(x, 0.1, name)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# --- every rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ALL_RULES)
def test_built_in_rules_satisfy_the_bound_rule_protocol(rule):
    assert isinstance(rule, BoundRule)


@pytest.mark.parametrize("rule", ALL_RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bounds_have_the_shape_and_dtype_of_the_input(rule, dtype):
    x = torch.log(torch.rand(3, 4, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01)
    lower, upper = rule.bounds(x)
    assert lower.shape == upper.shape == x.shape
    assert lower.dtype == upper.dtype == dtype


@pytest.mark.parametrize("rule", ALL_RULES)
def test_bounds_carry_no_gradient(rule):
    """Bounds are constants of the loss: no autograd history even if old_log_probs has one."""
    x = log_p(0.05, 0.5, 0.95).requires_grad_(True)
    lower, upper = rule.bounds(x * 1.0)
    assert not lower.requires_grad and not upper.requires_grad
    assert lower.grad_fn is None and upper.grad_fn is None


@pytest.mark.parametrize("rule", ALL_RULES)
def test_bounds_bracket_one(rule):
    """0 <= lower <= 1 <= upper: the ratio of an unchanged policy is never clipped."""
    lower, upper = rule.bounds(log_p(1e-6, 0.01, 0.2, 0.5, 0.99))
    assert torch.all((lower >= 0) & (lower <= 1) & (upper >= 1))


def test_bounds_do_not_modify_the_input():
    x = log_p(0.05, 0.5, 0.95)
    before = x.clone()
    for rule in (Band(), FixedClip(), DCPO()):
        rule.bounds(x)
    assert torch.equal(x, before)


# --- make_rule -------------------------------------------------------------------------------


def test_clip_methods_lists_the_seven_rules():
    assert set(CLIP_METHODS) == {"band", "band-relax", "band-upper", "band-lower", "clip", "clip-higher", "dcpo"}


def test_make_rule_builds_every_listed_clip_method():
    for clip_method in CLIP_METHODS:
        assert isinstance(make_rule(clip_method), BoundRule)


def test_make_rule_band_defaults_to_published_kl_0_05_cap_10():
    assert make_rule("band") == Band("kl", 0.05, 10.0)


def test_make_rule_band_passes_divergence_delta_and_upper_max():
    assert make_rule("band", divergence="tv", delta=0.1, upper_max=None) == Band("tv", 0.1, None)


def test_make_rule_band_relax_defaults_to_the_published_0_2_0_28():
    assert make_rule("band-relax") == Band("kl", 0.05, 10.0, relax=(0.2, 0.28))
    assert make_rule("band-relax", eps_low=0.1, eps_high=0.3, delta=0.1) == Band("kl", 0.1, 10.0, relax=(0.1, 0.3))


def test_make_rule_clip_is_fixed_0_2_0_2():
    assert make_rule("clip") == FixedClip(0.2, 0.2)


def test_make_rule_clip_higher_is_dapo_0_2_0_28():
    assert make_rule("clip-higher") == FixedClip(0.2, 0.28)


def test_make_rule_dcpo_is_0_16_0_20_cap_10():
    assert make_rule("dcpo") == DCPO(0.16, 0.20, 10.0)


def test_make_rule_eps_overrides_the_baseline_margins():
    assert make_rule("clip", eps_low=0.1, eps_high=0.3) == FixedClip(0.1, 0.3)
    assert make_rule("clip-higher", eps_high=0.4) == FixedClip(0.2, 0.4)
    assert make_rule("dcpo", eps_low=0.1, upper_max=None) == DCPO(0.1, 0.20, None)


@pytest.mark.parametrize("clip_method", ["ppo", "Band", "clip_higher", "", "dapo", "relax"])
def test_make_rule_rejects_unknown_clip_method(clip_method):
    with pytest.raises(ValueError, match="clip_method must be one of band, band-relax, band-upper, band-lower, clip, clip-higher, dcpo"):
        make_rule(clip_method)


# --- Band(relax=...) ------------------------------------------------------------------------


def test_relaxed_band_contains_both_the_band_and_the_fixed_interval():
    """relax=(eps_low, eps_high): lower = min(band_lower, 1 - eps_low), upper = max(band_upper, 1 + eps_high)."""
    x = log_p(1e-6, 0.01, 0.2, 0.5, 0.9, 0.999, 1.0)
    band_lower, band_upper = Band("kl", 0.05, None).bounds(x)
    lower, upper = Band("kl", 0.05, None, relax=(0.2, 0.28)).bounds(x)
    assert torch.equal(lower, torch.minimum(band_lower, torch.full_like(x, 0.8)))
    assert torch.equal(upper, torch.maximum(band_upper, torch.full_like(x, 1.28)))
    # the band binds below the fixed interval only for high-probability tokens: there relax widens it
    assert lower[-2].item() == pytest.approx(0.8) and upper[-2].item() == pytest.approx(1.28)
    assert lower[1].item() == band_lower[1].item() and upper[1].item() == band_upper[1].item()


def test_relaxed_band_is_capped_at_upper_max_last():
    """upper_max caps the relaxed bound too: the cap is the final clamp of SPEC §2."""
    _, upper = Band("kl", 0.05, 1.1, relax=(0.2, 0.28)).bounds(log_p(0.5, 0.999))
    assert upper.tolist() == pytest.approx([1.1, 1.1])


def test_relax_none_is_the_band():
    x = log_p(0.01, 0.5, 0.99)
    for got, expected in zip(Band(relax=None).bounds(x), band(x, 0.05, "kl", upper_max=10.0), strict=True):
        assert torch.equal(got, expected)


def test_relax_given_as_a_list_is_stored_as_a_tuple():
    rule = Band(relax=[0.2, 0.28])
    assert rule.relax == (0.2, 0.28) and hash(rule) == hash(Band(relax=(0.2, 0.28)))


@pytest.mark.parametrize("relax", [0.2, (0.2,), (0.2, 0.28, 0.3), "0.2,0.28"])
def test_relax_must_be_a_pair(relax):
    with pytest.raises(ValueError, match="relax must be None or a pair"):
        Band(relax=relax)


@pytest.mark.parametrize("relax, name", [((1.0, 0.28), "relax eps_low"), ((-0.1, 0.28), "relax eps_low"),
                                          ((0.2, -0.1), "relax eps_high"), ((0.2, float("nan")), "relax eps_high")])
def test_relax_margins_are_validated(relax, name):
    with pytest.raises(ValueError, match=name):
        Band(relax=relax)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("eps_low", [-0.1, 1.0, 1.5, float("nan"), "0.2", None, True])
def test_fixed_clip_rejects_bad_eps_low(eps_low):
    """eps_low must be a number in [0, 1) (lower = 1 - eps_low must stay positive)."""
    with pytest.raises(ValueError, match="eps_low"):
        FixedClip(eps_low=eps_low)


@pytest.mark.parametrize("eps_high", [-0.1, float("nan"), "0.28", None])
def test_fixed_clip_rejects_bad_eps_high(eps_high):
    with pytest.raises(ValueError, match="eps_high"):
        FixedClip(eps_high=eps_high)


@pytest.mark.parametrize("eps_low", [-0.1, float("nan"), "0.16"])
def test_dcpo_rejects_bad_eps_low(eps_low):
    with pytest.raises(ValueError, match="eps_low"):
        DCPO(eps_low=eps_low)


@pytest.mark.parametrize("eps_high", [-0.1, float("nan"), "0.2"])
def test_dcpo_rejects_bad_eps_high(eps_high):
    with pytest.raises(ValueError, match="eps_high"):
        DCPO(eps_high=eps_high)


@pytest.mark.parametrize("upper_max", [0.5, 0.0, -1.0, "10"])
def test_dcpo_rejects_upper_max_below_one(upper_max):
    with pytest.raises(ValueError, match="upper_max"):
        DCPO(upper_max=upper_max)


@pytest.mark.parametrize("delta", [0.0, -0.05, float("nan"), float("inf"), "0.05", None, True])
def test_band_rejects_bad_delta(delta):
    with pytest.raises(ValueError, match="delta"):
        Band(delta=delta)


@pytest.mark.parametrize("divergence", ["KL", "js", "", None, 3])
def test_band_rejects_unknown_divergence(divergence):
    with pytest.raises(ValueError, match="divergence"):
        Band(divergence=divergence)


@pytest.mark.parametrize("upper_max", [0.5, 0.0, -1.0, "10"])
def test_band_rejects_upper_max_below_one(upper_max):
    with pytest.raises(ValueError, match="upper_max"):
        Band(upper_max=upper_max)


def test_make_rule_validates_through_the_rule():
    with pytest.raises(ValueError, match="eps_low"):
        make_rule("clip", eps_low=-0.2)
    with pytest.raises(ValueError, match="delta"):
        make_rule("band", delta=0.0)


@pytest.mark.parametrize("kernel", ["compiled", None])
def test_band_rejects_an_unknown_kernel(kernel):
    with pytest.raises(ValueError, match="kernel must be one of"):
        Band("kl", 0.05, kernel=kernel)


@pytest.mark.parametrize("kernel", ["auto", "eager", "fused", "native"])
def test_band_passes_its_kernel_to_the_operator(kernel, monkeypatch):
    """Band.bounds calls the operator with its own kernel (recorded by a spy that computes eagerly)."""
    kernels = []

    def spy(*args, **kwargs):
        kernels.append(kwargs.pop("kernel"))
        return band(*args, kernel="eager", **kwargs)

    monkeypatch.setattr(bandpo.rules, "band", spy)
    old_log_probs = -torch.rand(3, 40, generator=torch.Generator().manual_seed(0)) * 10
    got = Band("kl", 0.05, kernel=kernel).bounds(old_log_probs)
    assert kernels == [kernel]
    for got_bound, expected in zip(got, band(old_log_probs, 0.05, "kl", upper_max=10.0, kernel="eager"), strict=True):
        assert torch.equal(got_bound, expected)


# --- Sided rules: band-upper, band-lower ---------------------------------------------------------

SIDED_P = (1e-6, 1e-3, 0.01, 0.08, 0.2, 0.5, 0.9, 0.999, 1.0)


@pytest.mark.parametrize("divergence, delta, upper_max", [("kl", 0.05, 10.0), ("tv", 0.1, None), ("chi2", 0.02, 3.0)])
def test_band_upper_is_the_bands_upper_bound_over_the_fixed_floor(divergence, delta, upper_max):
    """band-upper: lower = 1 - eps_low exactly, upper = Band's upper exactly (cap included)."""
    x = log_p(*SIDED_P)
    band_lower, band_upper = Band(divergence, delta, upper_max).bounds(x)
    lower, upper = make_rule("band-upper", divergence=divergence, delta=delta, upper_max=upper_max).bounds(x)
    assert torch.equal(upper, band_upper)
    assert torch.equal(lower, torch.full_like(x, 1.0 - 0.2))
    assert not torch.equal(lower, band_lower)  # the band's own lower bound differs: the floor is not the band's


@pytest.mark.parametrize("divergence, delta, upper_max", [("kl", 0.05, 10.0), ("tv", 0.1, None), ("chi2", 0.02, 3.0)])
def test_band_lower_is_the_bands_lower_bound_under_the_fixed_ceiling(divergence, delta, upper_max):
    """band-lower: lower = Band's lower exactly, upper = 1 + eps_high exactly (no cap needed)."""
    x = log_p(*SIDED_P)
    band_lower, band_upper = Band(divergence, delta, upper_max).bounds(x)
    lower, upper = make_rule("band-lower", divergence=divergence, delta=delta, upper_max=upper_max).bounds(x)
    assert torch.equal(lower, band_lower)
    assert torch.equal(upper, torch.full_like(x, 1.0 + 0.28))
    assert not torch.equal(upper, band_upper)


def test_sided_rules_default_to_clip_highers_margins_and_take_eps_overrides():
    assert make_rule("band-upper") == Sided(FixedClip(0.2, 0.28), Band("kl", 0.05, 10.0))
    assert make_rule("band-lower") == Sided(Band("kl", 0.05, 10.0), FixedClip(0.2, 0.28))
    assert make_rule("band-upper", eps_low=0.1, delta=0.1) == Sided(FixedClip(0.1, 0.28), Band("kl", 0.1, 10.0))
    assert make_rule("band-lower", eps_high=0.3) == Sided(Band("kl", 0.05, 10.0), FixedClip(0.2, 0.3))


def test_band_upper_and_band_lower_together_are_the_band():
    """Each sided rule replaces exactly one side of clip-higher: their band sides recombine into Band."""
    x = log_p(*SIDED_P)
    lower, _ = make_rule("band-lower").bounds(x)
    _, upper = make_rule("band-upper").bounds(x)
    band_lower, band_upper = Band().bounds(x)
    assert torch.equal(lower, band_lower) and torch.equal(upper, band_upper)


def test_sided_takes_each_side_from_its_rule():
    x = log_p(0.01, 0.5, 0.9)
    lower, upper = Sided(DCPO(), FixedClip(0.1, 0.5)).bounds(x)
    assert torch.equal(lower, DCPO().bounds(x)[0])
    assert torch.equal(upper, torch.full_like(x, 1.5))


@pytest.mark.parametrize("side", ["lower_rule", "upper_rule"])
@pytest.mark.parametrize("rule", [Band, "band", None, 0.2])
def test_sided_needs_rule_instances(side, rule):
    rules = {"lower_rule": FixedClip(), "upper_rule": Band(), side: rule}
    with pytest.raises(ValueError, match=side):
        Sided(**rules)


# --- The table of rules ----------------------------------------------------------------------------


def test_the_table_defines_every_clip_method_once_in_order():
    assert tuple(CLIP_METHOD_TABLE) == CLIP_METHODS
    assert all(name == method.name for name, method in CLIP_METHOD_TABLE.items())


@pytest.mark.parametrize("name", CLIP_METHODS)
def test_make_rule_builds_each_table_entry_with_its_margins(name):
    """The table's defaults are what make_rule uses, and eps overrides reach the rule where it has margins."""
    method = CLIP_METHOD_TABLE[name]
    x = log_p(0.01, 0.5, 0.9)
    default_lower, default_upper = make_rule(name).bounds(x)
    lower, upper = make_rule(name, eps_low=0.05, eps_high=0.5).bounds(x)
    if method.eps_low is None:
        assert torch.equal(lower, default_lower) and torch.equal(upper, default_upper)
    else:
        assert not (torch.equal(lower, default_lower) and torch.equal(upper, default_upper))


@pytest.mark.parametrize("name", CLIP_METHODS)
def test_per_token_rules_are_those_whose_bounds_depend_on_p(name):
    x = log_p(0.01, 0.3, 0.9)
    lower, upper = make_rule(name).bounds(x)
    depends_on_p = len(set(lower.tolist())) > 1 or len(set(upper.tolist())) > 1
    assert CLIP_METHOD_TABLE[name].per_token == depends_on_p


def test_banded_and_capped_flags_follow_the_rules():
    x = log_p(1e-4, 0.5)
    for name, method in CLIP_METHOD_TABLE.items():
        _, capped_upper = make_rule(name, upper_max=1.5).bounds(x)
        _, free_upper = make_rule(name, upper_max=None).bounds(x)
        assert method.capped == (not torch.equal(capped_upper, free_upper)), name
        tight = make_rule(name, delta=1e-4).bounds(x)
        loose = make_rule(name, delta=0.5).bounds(x)
        assert method.banded == any(not torch.equal(a, b) for a, b in zip(tight, loose, strict=True)), name


def test_rule_table_markdown_has_a_row_per_method_with_its_defaults():
    table = rule_table_markdown().splitlines()
    assert len(table) == 2 + len(CLIP_METHODS)
    assert "| `clip-higher` |" in table[2 + CLIP_METHODS.index("clip-higher")]
    assert table[2 + CLIP_METHODS.index("dcpo")].endswith("| 0.16 / 0.2, upper_max 10 |")
    assert table[2].endswith("| kl, delta 0.05, upper_max 10 |")
