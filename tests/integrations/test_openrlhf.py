"""The OpenRLHF integration: PolicyLoss's signature, and PolicyLoss's numbers for the fixed interval,
with and without OpenRLHF's train/rollout importance-sampling correction.

The comparisons need OpenRLHF; they run in the integrations venv (scripts/test-integrations.sh).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
import types

import pytest
from optional_packages import import_if_installed

torch = import_if_installed("torch")

from bandpo.integrations.openrlhf import (  # noqa: E402
    ENVIRONMENT_PARAMETERS,
    BandPOPolicyLoss,
    bandpo_parameters_from_environment,
    rollout_correction,
    use_bandpo_policy_loss,
)
from bandpo.loss import policy_loss  # noqa: E402
from bandpo.rules import CLIP_METHODS, DCPO, Band, FixedClip  # noqa: E402


@functools.lru_cache(maxsize=1)
def import_openrlhf_policy_loss():
    """OpenRLHF's PolicyLoss class, or skip where OpenRLHF cannot be imported.

    ``openrlhf.models/__init__`` imports the actor model and with it flash-attn (GPU only); where only
    that is missing, the package is entered without running its ``__init__`` so that ``models/loss.py``
    itself (which needs only torch and deepspeed) is the code under comparison.
    """
    import_if_installed("openrlhf")
    import_if_installed("deepspeed")
    try:
        return importlib.import_module("openrlhf.models").PolicyLoss
    except ModuleNotFoundError as error:
        if error.name != "flash_attn":
            raise
    spec = importlib.util.find_spec("openrlhf.models")
    package = types.ModuleType("openrlhf.models")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["openrlhf.models"] = package
    return importlib.import_module("openrlhf.models.loss").PolicyLoss


def make_batch(seed: int, batch: int = 6, tokens: int = 10):
    """log-probs, old log-probs, per-token advantages and an action mask with one empty row."""
    generator = torch.Generator().manual_seed(seed)
    old_log_probs = torch.log(torch.rand(batch, tokens, generator=generator, dtype=torch.float64) * 0.98 + 0.01)
    log_ratio = torch.randn(batch, tokens, generator=generator, dtype=torch.float64) * 0.6
    log_ratio[0, :2] = 2.0  # ratio e^2 > 3: the dual clip binds for A < 0
    log_probs = (old_log_probs + log_ratio).clamp(max=0.0)
    advantages = torch.randn(batch, 1, generator=generator, dtype=torch.float64).expand(batch, tokens).clone()
    advantages[0] = -1.0
    lengths = torch.randint(1, tokens + 1, (batch,), generator=generator)
    action_mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(-1)
    action_mask[-1] = False
    return log_probs, old_log_probs, advantages, action_mask


def run_loss(loss_module, batch, rollout_log_probs=None, **aggregation):
    """Forward and the gradient of the loss with respect to the log-probs."""
    log_probs, old_log_probs, advantages, action_mask = batch
    log_probs = log_probs.clone().requires_grad_(True)
    loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio = loss_module(
        log_probs, old_log_probs, advantages, action_mask=action_mask, rollout_log_probs=rollout_log_probs,
        **aggregation,
    )
    (grad,) = torch.autograd.grad(loss, log_probs)
    return loss.detach(), grad, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio


def test_signatures_match_policy_loss():
    openrlhf_policy_loss = import_openrlhf_policy_loss()
    ours = inspect.signature(BandPOPolicyLoss.__init__).parameters
    theirs = inspect.signature(openrlhf_policy_loss.__init__).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default or (
            isinstance(parameter.default, (list, tuple)) and tuple(ours[name].default) == tuple(parameter.default)
        ), name
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in list(ours)[len(theirs) :])
    assert inspect.signature(BandPOPolicyLoss.forward).parameters.keys() == (
        inspect.signature(openrlhf_policy_loss.forward).parameters.keys()
    )


AGGREGATIONS = [
    {},
    {"dp_size": 2, "batch_num_tokens": 37.0, "global_batch_size": 9.0},
]


@pytest.mark.parametrize("aggregation", AGGREGATIONS, ids=["local", "global"])
@pytest.mark.parametrize("token_level_loss", [True, False])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
@pytest.mark.parametrize("clip_method", ["clip", "clip-higher"])
def test_fixed_interval_equals_openrlhf_policy_loss(clip_method, dual_clip, token_level_loss, aggregation):
    openrlhf_policy_loss = import_openrlhf_policy_loss()
    margins = {"clip_eps_low": 0.2, "clip_eps_high": 0.28 if clip_method == "clip-higher" else 0.2}
    batch = make_batch(seed=1)
    ours = run_loss(
        BandPOPolicyLoss(
            **margins, dual_clip=dual_clip, token_level_loss=token_level_loss, bandpo_clip_method=clip_method
        ),
        batch,
        **aggregation,
    )
    theirs = run_loss(
        openrlhf_policy_loss(**margins, dual_clip=dual_clip, token_level_loss=token_level_loss), batch, **aggregation
    )
    for name, index in (("loss", 0), ("grad", 1), ("ppo_kl", 3)):
        torch.testing.assert_close(
            ours[index], theirs[index], rtol=1e-12, atol=1e-12, msg=lambda text, name=name: f"{name}: {text}"
        )
    assert ours[2].item() == pytest.approx(theirs[2].item(), rel=1e-6)  # OpenRLHF counts in float32
    assert ours[4:] == (None, None) == theirs[4:]


@pytest.mark.parametrize(("token_level_loss", "loss_agg_mode"), [(True, "token-mean"), (False, "seq-mean-token-mean")])
def test_band_equals_bandpo_policy_loss(token_level_loss, loss_agg_mode):
    batch = make_batch(seed=2)
    loss, grad, clip_ratio, *_ = run_loss(BandPOPolicyLoss(dual_clip=10.0, token_level_loss=token_level_loss), batch)
    log_probs, old_log_probs, advantages, action_mask = batch
    log_probs = log_probs.clone().requires_grad_(True)
    expected, metrics = policy_loss(
        log_probs, old_log_probs, advantages, action_mask,
        clip=Band(delta=0.05, upper_max=10.0), loss_agg_mode=loss_agg_mode, dual_clip=10.0,
    )
    (expected_grad,) = torch.autograd.grad(expected, log_probs)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(clip_ratio, metrics["clip_ratio/region_mean"])


@pytest.mark.parametrize("token_level_loss", [True, False])
def test_global_aggregation_is_invariant_to_data_parallel_sharding(token_level_loss):
    batch = make_batch(seed=3)
    loss_module = BandPOPolicyLoss(dual_clip=10.0, token_level_loss=token_level_loss)
    full_loss, full_grad, *_ = run_loss(loss_module, batch)
    action_mask = batch[3]
    info = {
        "dp_size": 2,
        "batch_num_tokens": float(action_mask.sum()),
        "global_batch_size": float((action_mask.sum(-1) > 0).sum()),
    }
    shards = [run_loss(loss_module, tuple(t[rows] for t in batch), **info) for rows in torch.arange(6).split(3)]
    torch.testing.assert_close(sum(shard[0] for shard in shards) / 2, full_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([shard[1] for shard in shards]) / 2, full_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"policy_loss_type": "gspo"}, "policy_loss_type must be 'ppo'"),
        ({"is_correction_level": "tokens"}, "is_correction_level must be one of off, token, seq"),
        ({"is_correction_mode": "drop"}, "is_correction_mode must be one of mask, clip"),
        ({"is_correction_gating": "kl"}, "is_correction_gating must be one of ratio, binary_kl, tv"),
        ({"is_correction_level": "seq", "is_correction_mode": "clip"}, "is_correction_mode='clip' clamps"),
        (
            {"is_correction_level": "token", "is_correction_mode": "clip", "is_correction_gating": "tv",
             "is_correction_threshold": (0.0, 0.1)},
            "needs is_correction_level='token' and is_correction_gating='ratio'",
        ),
        ({"is_correction_level": "token", "is_correction_gating": "binary_kl"}, "bounds a divergence from above only"),
        ({"is_correction_threshold": (5.0, 0.5)}, "is_correction_threshold high must be"),
        ({"is_correction_threshold": (-1.0, 5.0)}, "is_correction_threshold low must be"),
        ({"is_correction_threshold": (5.0,)}, "is_correction_threshold must be a pair"),
        ({"dual_clip": 0.5}, "dual_clip must be"),
        ({"bandpo_clip_method": "bandpo"}, f"bandpo_clip_method must be one of {', '.join(CLIP_METHODS)}"),
        ({"bandpo_delta": 0.0}, "delta must be"),
        ({"bandpo_clip_method": "band-relax", "clip_eps_low": 1.5}, "eps_low must be"),
        ({"bandpo_clip_method": "band", "clip_eps_low": 1.5}, r"clip_eps_low must be a number in \[0, 1\), got 1.5"),
        ({"bandpo_clip_method": "band", "clip_eps_high": -0.1}, "clip_eps_high must be a finite number >= 0"),
        ({"bandpo_clip_method": "band", "clip_eps_low": float("nan")}, "clip_eps_low must be"),
    ],
)
def test_bad_arguments_are_rejected_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        BandPOPolicyLoss(**arguments)


def test_environment_parameters_are_parsed_and_typos_rejected():
    assert bandpo_parameters_from_environment(
        {"BANDPO_CLIP_METHOD": "band-relax", "BANDPO_DELTA": "0.1", "BANDPO_UPPER_MAX": "none", "PATH": "/bin",
         "BANDPO_DIVERGENCE": "tv"}
    ) == {"bandpo_clip_method": "band-relax", "bandpo_delta": 0.1, "bandpo_upper_max": None, "bandpo_divergence": "tv"}
    for name, (keyword, _) in ENVIRONMENT_PARAMETERS.items():
        assert keyword == name.lower()  # BANDPO_X sets bandpo_x
        assert keyword in inspect.signature(BandPOPolicyLoss.__init__).parameters
    with pytest.raises(ValueError, match="unknown BandPO environment variable.*BANDPO_DELTAA"):
        bandpo_parameters_from_environment({"BANDPO_DELTAA": "0.1"})
    with pytest.raises(ValueError, match="BANDPO_DELTA must be a float"):
        bandpo_parameters_from_environment({"BANDPO_DELTA": "big"})


def test_bandpo_variables_of_other_integrations_are_passed_over():
    """A job environment may carry BANDPO_ALLOW_UNTESTED_TRL (read by bandpo.integrations.trl): not a typo."""
    assert bandpo_parameters_from_environment({"BANDPO_ALLOW_UNTESTED_TRL": "1", "BANDPO_DELTA": "0.1"}) == {
        "bandpo_delta": 0.1
    }


def test_setup_hook_swaps_the_name_the_trainer_instantiates(monkeypatch):
    """The hook replaces ``PolicyLoss`` in the target module with BandPO's, built with the env parameters.

    A stand-in module plays ``openrlhf.trainer.ray.ppo_actor`` (the real one imports GPU-only packages).
    """
    target = types.ModuleType("fake_ppo_actor")
    target.PolicyLoss = object
    monkeypatch.setitem(sys.modules, "fake_ppo_actor", target)
    for name in [name for name in os.environ if name.startswith("BANDPO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BANDPO_CLIP_METHOD", "band")
    monkeypatch.setenv("BANDPO_DELTA", "0.1")
    use_bandpo_policy_loss("fake_ppo_actor")
    built = target.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=10.0, token_level_loss=False)
    assert isinstance(built, BandPOPolicyLoss)
    assert built.rule == Band(delta=0.1)
    monkeypatch.setenv("BANDPO_CLIP_METHOD", "clip-higher")
    use_bandpo_policy_loss("fake_ppo_actor")
    assert target.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28).rule == FixedClip(0.2, 0.28)
    monkeypatch.setenv("BANDPO_CLIP_METHOD", "band-relax")
    use_bandpo_policy_loss("fake_ppo_actor")
    assert target.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28).rule == Band(delta=0.1, relax=(0.2, 0.28))
    monkeypatch.setenv("BANDPO_CLIP_METHOD", "clip_higher")
    with pytest.raises(ValueError, match="bandpo_clip_method must be one of"):
        use_bandpo_policy_loss("fake_ppo_actor")


PADDING_VALUES = {"+inf": float("inf"), "-inf": -float("inf"), "nan": float("nan")}


@pytest.mark.parametrize("value", PADDING_VALUES.values(), ids=PADDING_VALUES.keys())
@pytest.mark.parametrize("token_level_loss", [True, False])
def test_padding_contributes_nothing_whatever_it_holds(token_level_loss, value):
    """OpenRLHF aggregates with (loss * mask).sum(): +-inf or NaN in padding (advantages, log-probs) would poison it."""
    log_probs, old_log_probs, advantages, action_mask = make_batch(seed=8)
    padded = tuple(t.masked_fill(~action_mask, value) for t in (log_probs, old_log_probs, advantages)) + (action_mask,)
    loss_module = BandPOPolicyLoss(dual_clip=3.0, token_level_loss=token_level_loss)
    loss, grad, clip_ratio, ppo_kl, *_ = run_loss(loss_module, padded)
    metrics = {name: t.item() for name, t in loss_module.last_metrics.items()}  # read now: the next call replaces them
    clean_loss, clean_grad, clean_clip_ratio, clean_ppo_kl, *_ = run_loss(
        loss_module, (log_probs, old_log_probs, advantages, action_mask)
    )
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss.item() == clean_loss.item() and torch.equal(grad, clean_grad)
    assert (clip_ratio.item(), ppo_kl.item()) == (clean_clip_ratio.item(), clean_ppo_kl.item())
    assert metrics == {name: t.item() for name, t in loss_module.last_metrics.items()}


@pytest.mark.parametrize("dual_clip", [float("inf"), 1.0, float("nan")])
def test_dual_clip_is_checked_like_bandpo_policy_loss(dual_clip):
    with pytest.raises(ValueError, match="dual_clip must be None or a finite number > 1"):
        BandPOPolicyLoss(dual_clip=dual_clip)
    log_probs, old_log_probs, advantages, action_mask = make_batch(seed=9)
    with pytest.raises(ValueError, match="dual_clip must be None or a finite number > 1"):
        policy_loss(log_probs, old_log_probs, advantages, action_mask, clip=Band(), dual_clip=dual_clip)


def test_bad_inputs_give_the_errors_of_bandpo_policy_loss():
    log_probs, old_log_probs, advantages, action_mask = make_batch(seed=10)
    with pytest.raises(ValueError, match="old_log_probs must have the shape of log_probs"):
        run_loss(BandPOPolicyLoss(), (log_probs, old_log_probs[:, :-1], advantages, action_mask))
    with pytest.raises(ValueError, match="advantages contain NaN"):
        run_loss(BandPOPolicyLoss(), (log_probs, old_log_probs, advantages * float("nan"), action_mask))


# OpenRLHF's train/rollout importance-sampling correction (is_correction_*), composed with any bound rule.

CORRECTIONS = {  # (level, mode, gating, threshold): OpenRLHF's named schemes and the divergence gates
    "icepop": ("token", "mask", "ratio", (0.5, 5.0)),
    "tis": ("token", "clip", "ratio", (0.5, 5.0)),
    "seq-mask-tis": ("seq", "mask", "ratio", (0.5, 5.0)),
    "token-binary-kl": ("token", "mask", "binary_kl", (0.0, 0.01)),
    "seq-binary-kl": ("seq", "mask", "binary_kl", (0.0, 0.01)),
    "token-tv": ("token", "mask", "tv", (0.0, 0.05)),
    "seq-tv": ("seq", "mask", "tv", (0.0, 0.05)),
}


def correction_arguments(name: str) -> dict:
    level, mode, gating, threshold = CORRECTIONS[name]
    return {
        "is_correction_level": level, "is_correction_mode": mode, "is_correction_gating": gating,
        "is_correction_threshold": threshold,
    }


def make_rollout_log_probs(batch, seed: int):
    """The rollout engine's log-probs: old log-probs off by a per-sequence shift plus per-token noise, so
    that tokens and sequences pass and fail every gate: rows 0 and 3 nearly agree with the training engine,
    row 1 (w ~ e^2) and row 2 (w ~ e^-1.2) are far off as sequences, and two tokens have w = e^2 and e^-2."""
    old_log_probs = batch[1]
    generator = torch.Generator().manual_seed(seed)
    rows, tokens = old_log_probs.shape
    shift = torch.randn(rows, 1, generator=generator, dtype=torch.float64) * 0.6
    scale = torch.full((rows, 1), 0.5, dtype=torch.float64)
    shift[[0, 3]], scale[[0, 3]] = 0.0, 0.03
    shift[1], shift[2] = 2.0, -1.2
    noise = torch.randn(rows, tokens, generator=generator, dtype=torch.float64) * scale
    log_weight = shift + noise  # log pi_old - log pi_rollout
    log_weight[1, 0], log_weight[2, 1] = 2.0, -2.0
    return (old_log_probs - log_weight).clamp(max=0.0)


@pytest.mark.parametrize("aggregation", AGGREGATIONS, ids=["local", "global"])
@pytest.mark.parametrize("token_level_loss", [True, False])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
@pytest.mark.parametrize("clip_method", ["clip", "clip-higher"])
@pytest.mark.parametrize("correction", list(CORRECTIONS))
def test_rollout_correction_equals_openrlhf_policy_loss(
    correction, clip_method, dual_clip, token_level_loss, aggregation
):
    openrlhf_policy_loss = import_openrlhf_policy_loss()
    margins = {"clip_eps_low": 0.2, "clip_eps_high": 0.28 if clip_method == "clip-higher" else 0.2}
    arguments = {**margins, "dual_clip": dual_clip, "token_level_loss": token_level_loss,
                 **correction_arguments(correction)}
    batch = make_batch(seed=11, batch=8, tokens=12)
    rollout_log_probs = make_rollout_log_probs(batch, seed=12)
    ours = run_loss(BandPOPolicyLoss(**arguments, bandpo_clip_method=clip_method), batch, rollout_log_probs,
                    **aggregation)
    theirs = run_loss(openrlhf_policy_loss(**arguments), batch, rollout_log_probs, **aggregation)
    for name, index in (("loss", 0), ("grad", 1), ("ppo_kl", 3), ("vllm_kl", 4)):
        torch.testing.assert_close(
            ours[index], theirs[index], rtol=1e-12, atol=1e-12, msg=lambda text, name=name: f"{name}: {text}"
        )
    assert ours[2].item() == pytest.approx(theirs[2].item(), rel=1e-6)  # OpenRLHF counts in float32
    filter_ratio, their_filter_ratio = ours[5].item(), theirs[5].item()
    if CORRECTIONS[correction][0] == "seq":
        # OpenRLHF's 0/0 mean makes the sequence without valid tokens NaN, and counts it as filtered;
        # here only sequences with a valid token are units.
        rows, empty = batch[3].shape[0], int((batch[3].sum(-1) == 0).sum())
        assert empty == 1
        assert filter_ratio == pytest.approx((their_filter_ratio * rows - empty) / (rows - empty), rel=1e-6)
    else:
        assert filter_ratio == pytest.approx(their_filter_ratio, rel=1e-6)
    assert 0.0 < filter_ratio < 1.0  # the gate drops or clamps some units and keeps others


def openrlhf_correction_weights(correction, batch, rollout_log_probs):
    """OpenRLHF's own per-token correction factor, read off its PolicyLoss: at ratio 1 with A = -1, no clipping
    and the loss summed over tokens, d loss / d log pi of each token is that token's factor."""
    openrlhf_policy_loss = import_openrlhf_policy_loss()
    _, old_log_probs, _, action_mask = batch
    probe = openrlhf_policy_loss(clip_eps_low=0.99, clip_eps_high=1e9, **correction_arguments(correction))
    advantages = -torch.ones_like(old_log_probs)
    _, grad, *_ = run_loss(probe, (old_log_probs, old_log_probs, advantages, action_mask), rollout_log_probs,
                           batch_num_tokens=1.0)
    return grad


@pytest.mark.parametrize("clip_method", ["band", "band-relax", "dcpo"])
@pytest.mark.parametrize("correction", list(CORRECTIONS))
def test_rollout_correction_composes_with_every_rule(correction, clip_method):
    """With correction, each token's gradient is its gradient without correction times OpenRLHF's factor."""
    batch = make_batch(seed=13, batch=8, tokens=12)
    rollout_log_probs = make_rollout_log_probs(batch, seed=14)
    common = {"dual_clip": 3.0, "bandpo_clip_method": clip_method, "clip_eps_high": 0.28}
    aggregation = {"batch_num_tokens": 50.0}
    _, corrected_grad, *_ = run_loss(
        BandPOPolicyLoss(**common, **correction_arguments(correction)), batch, rollout_log_probs, **aggregation
    )
    _, plain_grad, *_ = run_loss(BandPOPolicyLoss(**common), batch, **aggregation)
    weights = openrlhf_correction_weights(correction, batch, rollout_log_probs)
    valid = batch[3]
    assert ((weights > 0) & (plain_grad != 0)).any() and (((weights - 1).abs() > 0.1) & valid).any()
    if CORRECTIONS[correction][1] == "mask":
        assert ((weights == 0) & valid).any()
    else:  # clip: some factors sit at a threshold
        assert (((weights == 5.0) | (weights == 0.5)) & valid).any()
    torch.testing.assert_close(corrected_grad, plain_grad * weights, rtol=1e-12, atol=1e-15)


def test_rollout_correction_weights_by_hand():
    """Three tokens with w = pi_old / pi_rollout = 3, 6 and 0.25, band (0.5, 5), and one padding token."""
    old_log_probs = torch.log(torch.tensor([[0.6, 0.6, 0.2, 0.5]], dtype=torch.float64))
    rollout_log_probs = torch.log(torch.tensor([[0.2, 0.1, 0.8, 0.9]], dtype=torch.float64))
    mask = torch.tensor([[True, True, True, False]])

    def correct(level, mode, gating="ratio", threshold=(0.5, 5.0)):
        return rollout_correction(old_log_probs, rollout_log_probs, mask, level=level, mode=mode, gating=gating,
                                  threshold=threshold)

    icepop = correct("token", "mask")
    torch.testing.assert_close(icepop.weights, torch.tensor([[3.0, 0.0, 0.0, 1.0]], dtype=torch.float64))
    assert icepop.is_filter_ratio.item() == pytest.approx(2 / 3)
    tis = correct("token", "clip")
    torch.testing.assert_close(tis.weights, torch.tensor([[3.0, 5.0, 0.5, 1.0]], dtype=torch.float64))
    sequence = correct("seq", "mask")  # geometric mean (3 * 6 * 0.25)^(1/3) = 4.5^(1/3) ~ 1.65: kept
    torch.testing.assert_close(sequence.weights, torch.tensor([[3.0, 6.0, 0.25, 1.0]], dtype=torch.float64))
    assert sequence.is_filter_ratio.item() == 0.0
    tv = correct("token", "mask", "tv", (0.0, 0.45))  # |p_rollout - p_old| = 0.4, 0.5, 0.6
    torch.testing.assert_close(tv.weights, torch.tensor([[3.0, 0.0, 0.0, 1.0]], dtype=torch.float64))
    vllm_kl = (rollout_log_probs - old_log_probs)[mask].mean()
    torch.testing.assert_close(tv.vllm_kl, vllm_kl)


def test_rollout_correction_needs_rollout_log_probs():
    batch = make_batch(seed=15)
    with pytest.raises(ValueError, match="rollout_log_probs .* is required with is_correction_level='token'"):
        run_loss(BandPOPolicyLoss(is_correction_level="token"), batch)
    with pytest.raises(ValueError, match="rollout_log_probs must have the shape of old_log_probs"):
        run_loss(BandPOPolicyLoss(is_correction_level="seq"), batch, batch[1][:, :-1])


@pytest.mark.parametrize("value", PADDING_VALUES.values(), ids=PADDING_VALUES.keys())
@pytest.mark.parametrize("correction", ["icepop", "tis", "seq-mask-tis", "seq-binary-kl"])
def test_padding_with_rollout_correction_contributes_nothing(correction, value):
    """Padding of every input, rollout log-probs included, may hold +-inf or NaN: the loss, gradient and logs
    stay those of clean padding."""
    log_probs, old_log_probs, advantages, action_mask = make_batch(seed=16)
    rollout_log_probs = make_rollout_log_probs((log_probs, old_log_probs, advantages, action_mask), seed=17)
    filled = [t.masked_fill(~action_mask, value) for t in (log_probs, old_log_probs, advantages, rollout_log_probs)]
    loss_module = BandPOPolicyLoss(dual_clip=3.0, **correction_arguments(correction))
    padded = run_loss(loss_module, (*filled[:3], action_mask), filled[3])
    clean = run_loss(loss_module, (log_probs, old_log_probs, advantages, action_mask), rollout_log_probs)
    assert all(torch.isfinite(value).all() for value in padded if value is not None)
    for got, expected in zip(padded, clean, strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("correction", list(CORRECTIONS))
def test_nan_rollout_log_prob_on_a_valid_token_is_treated_as_openrlhf_treats_it(correction):
    """A NaN rollout log-probability on a valid token: mask drops its unit and counts it as filtered, clip gives
    it a NaN weight and does not count it; is_filter_ratio, the loss (NaN with clip) and vllm_kl (NaN) are
    OpenRLHF's own."""
    openrlhf_policy_loss = import_openrlhf_policy_loss()
    batch = make_batch(seed=18, batch=8, tokens=12)
    rollout_log_probs = make_rollout_log_probs(batch, seed=19)
    assert batch[3][1, 0]
    rollout_log_probs[1, 0] = float("nan")
    arguments = {"dual_clip": 3.0, "clip_eps_high": 0.28, **correction_arguments(correction)}
    ours = run_loss(BandPOPolicyLoss(**arguments, bandpo_clip_method="clip-higher"), batch, rollout_log_probs)
    theirs = run_loss(openrlhf_policy_loss(**arguments), batch, rollout_log_probs)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.isnan(ours[0]).item() == (CORRECTIONS[correction][1] == "clip")
    assert torch.isnan(ours[4]) and torch.isnan(theirs[4])
    filter_ratio, their_filter_ratio = ours[5].item(), theirs[5].item()
    if CORRECTIONS[correction][0] == "seq":  # OpenRLHF also counts the empty row (see above)
        rows, empty = batch[3].shape[0], int((batch[3].sum(-1) == 0).sum())
        their_filter_ratio = (their_filter_ratio * rows - empty) / (rows - empty)
    assert filter_ratio == pytest.approx(their_filter_ratio, rel=1e-6)


EXAMPLE_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "openrlhf", "run_qwen2.5-3b_bandpo.sh")


@pytest.mark.parametrize(
    ("method", "rule"),
    [
        ("band", Band(delta=0.05, upper_max=10.0)),
        ("band-relax", Band(delta=0.05, upper_max=10.0, relax=(0.2, 0.28))),
        ("clip", FixedClip(0.2, 0.2)),
        ("clip-higher", FixedClip(0.2, 0.28)),
        ("dcpo", DCPO(0.16, 0.20, upper_max=10.0)),
    ],
)
def test_example_script_builds_the_rule_in_the_worker(method, rule, tmp_path, monkeypatch):
    """The OpenRLHF recipe's Ray job: its runtime env's hook and BANDPO_* variables, with the script's
    --actor.eps_clip_low_high and --actor.dual_clip, build BandPOPolicyLoss with ``rule``.

    A stand-in ``ray`` on PATH records the job submission."""
    import json

    stub = tmp_path / "bin" / "ray"
    stub.parent.mkdir()
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$ARGUMENTS_FILE"\n')  # NUL: the JSON spans lines
    stub.chmod(0o755)
    arguments_file = tmp_path / "arguments"
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "ARGUMENTS_FILE": str(arguments_file),
           "REWARD_FUNC": "reward.py"}
    subprocess.run(["bash", EXAMPLE_SCRIPT, method], env=env, check=True, timeout=60)
    arguments = arguments_file.read_text().split("\0")
    runtime_env = json.loads(next(a for a in arguments if a.startswith("--runtime-env-json=")).split("=", 1)[1])
    module, _, function = runtime_env["worker_process_setup_hook"].rpartition(".")
    assert getattr(importlib.import_module(module), function) is use_bandpo_policy_loss
    eps = arguments.index("--actor.eps_clip_low_high")
    dual_clip = float(arguments[arguments.index("--actor.dual_clip") + 1])
    target = types.ModuleType("fake_ppo_actor")
    monkeypatch.setitem(sys.modules, "fake_ppo_actor", target)
    for name in [name for name in os.environ if name.startswith("BANDPO_")]:
        monkeypatch.delenv(name)
    for name, value in runtime_env["env_vars"].items():
        monkeypatch.setenv(name, value)
    use_bandpo_policy_loss("fake_ppo_actor")
    built = target.PolicyLoss(
        clip_eps_low=float(arguments[eps + 1]), clip_eps_high=float(arguments[eps + 2]), dual_clip=dual_clip
    )
    assert built.rule == rule and built.dual_clip == 10.0


# bandpo check openrlhf: the job's command line read by OpenRLHF's own parser and checks, then BandPOPolicyLoss.

OPENRLHF_REQUIRED = ("--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", "4")
"""Arguments OpenRLHF's own checks need whatever the loss (group advantages need a group)."""


def check_job(*arguments: str, environment=None):
    import_if_installed("openrlhf")
    from bandpo.integrations.openrlhf import check_openrlhf_command_line

    return check_openrlhf_command_line(list(arguments), environment or {})


def recorded_job(method: str, tmp_path) -> list[str]:
    """The example script's ``ray job submit`` arguments, from a stand-in ``ray`` on PATH."""
    stub = tmp_path / "bin" / "ray"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$ARGUMENTS_FILE"\n')
    stub.chmod(0o755)
    arguments_file = tmp_path / f"arguments-{method}"
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "ARGUMENTS_FILE": str(arguments_file),
           "REWARD_FUNC": "reward.py"}
    subprocess.run(["bash", EXAMPLE_SCRIPT, method], env=env, check=True, timeout=60)
    return arguments_file.read_text().split("\0")[:-1]


@pytest.mark.parametrize(
    ("method", "rule"),
    [("band", Band(delta=0.05, upper_max=10.0)), ("clip-higher", FixedClip(0.2, 0.28)),
     ("dcpo", DCPO(0.16, 0.20, upper_max=10.0))],
)
def test_check_reads_the_example_job_with_openrlhfs_own_parser(method, rule, tmp_path):
    """The recipe's runtime env and train_ppo_ray arguments (after ``ray job submit --address=...``)."""
    job = recorded_job(method, tmp_path)
    runtime_env = next(a for a in job if a.startswith("--runtime-env-json="))
    settings = check_job(runtime_env, *job[job.index("--"):])
    assert settings.loss.rule == rule
    assert (settings.loss.dual_clip, settings.loss.token_level_loss) == (10.0, False)
    assert settings.bandpo_parameters == {"bandpo_clip_method": method, "bandpo_divergence": "kl",
                                          "bandpo_delta": 0.05, "bandpo_upper_max": 10.0}
    assert not any("setup_hook not checked" in note for note in settings.notes)


def test_check_takes_bandpo_words_over_the_runtime_env_and_notes_an_unchecked_hook():
    settings = check_job("BANDPO_DELTA=0.1", "--", "python3", "-m", "openrlhf.cli.train_ppo_ray", *OPENRLHF_REQUIRED,
                         "--actor.eps_clip_low_high", "0.2", "0.28", environment={"BANDPO_DIVERGENCE": "tv"})
    assert settings.loss.rule == Band(divergence="tv", delta=0.1)
    assert settings.policy_loss_arguments["clip_eps_high"] == 0.28
    assert settings.notes[-1] == ("worker_process_setup_hook not checked (give the job's --runtime-env-json to "
                                  "check it)")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--actor.eps_clip_lowhigh", "0.2", "0.28"),
         "OpenRLHF's train_ppo_ray refuses the arguments: unrecognized arguments: --actor.eps_clip_lowhigh"),
        (("--actor.loss_agg_mode", "seq-mean"), "argument --actor.loss_agg_mode: invalid choice: 'seq-mean'"),
        (("--algo.advantage.is_correction_threshold", "1", "2", "3"), "takes HIGH or LOW HIGH"),
        (("BANDPO_CLIP_METHOD=clip_higher",), f"bandpo_clip_method must be one of {', '.join(CLIP_METHODS)}"),
        (("BANDPO_DELTAA=0.1",), "unknown BandPO environment variable"),
        (("--actor.eps_clip_low_high", "1.5", "0.2"), r"clip_eps_low must be a number in \[0, 1\), got 1.5"),
        (("--actor.policy_loss_type", "gspo"), "policy_loss_type must be 'ppo'"),
        (("--algo.advantage.is_correction_level", "seq", "--algo.advantage.is_correction_mode", "clip"),
         "is_correction_mode='clip' clamps the per-token ratio"),
        (('--runtime-env-json={"worker_process_setup_hook": "my.hook"}',),
         "the runtime env's worker_process_setup_hook is 'my.hook', so OpenRLHF keeps its own PolicyLoss"),
        (("--runtime-env-json", "{not json"), "--runtime-env-json must be JSON"),
    ],
    ids=["unknown-argument", "choice", "openrlhf-assert", "clip-method", "env-typo", "margin", "gspo",
         "correction", "hook", "json"],
)
def test_check_refuses_wrong_jobs_with_the_reason(arguments, message):
    words = [a for a in arguments if a.startswith(("BANDPO_", "--runtime-env-json", "{"))]
    rest = [a for a in arguments if a not in words]
    with pytest.raises(ValueError, match=message):
        check_job(*words, *OPENRLHF_REQUIRED, *rest)


def test_check_command_prints_the_settings_or_the_error(capsys):
    import_if_installed("openrlhf")
    from bandpo.cli.main import main

    assert main(["check", "openrlhf", "BANDPO_CLIP_METHOD=clip-higher", *OPENRLHF_REQUIRED,
                 "--actor.eps_clip_low_high", "0.2", "0.28", "--actor.dual_clip", "10"]) == 0
    out = capsys.readouterr().out
    assert "clip method    clip-higher" in out and "margins        clip_eps_low 0.2, clip_eps_high 0.28" in out
    assert "rule           FixedClip(eps_low=0.2, eps_high=0.28)" in out
    assert main(["check", "openrlhf", *OPENRLHF_REQUIRED, "--actor.dual_clip", "0.5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("bandpo check: error: dual_clip must be")
