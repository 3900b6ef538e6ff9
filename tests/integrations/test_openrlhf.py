"""The OpenRLHF integration: PolicyLoss's signature, and PolicyLoss's numbers for the fixed interval.

The comparisons need OpenRLHF; they run in the integrations venv (scripts/test-integrations.sh).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
import types

import pytest

torch = pytest.importorskip("torch")

from bandpo.integrations.openrlhf import (  # noqa: E402
    BandPOPolicyLoss,
    bandpo_parameters_from_environment,
    use_bandpo_policy_loss,
)
from bandpo.loss import policy_loss  # noqa: E402
from bandpo.rules import Band, FixedClip  # noqa: E402


@functools.lru_cache(maxsize=1)
def import_openrlhf_policy_loss():
    """OpenRLHF's PolicyLoss class, or skip where OpenRLHF cannot be imported.

    ``openrlhf.models/__init__`` imports the actor model and with it flash-attn (GPU only); where only
    that is missing, the package is entered without running its ``__init__`` so that ``models/loss.py``
    itself (which needs only torch and deepspeed) is the code under comparison.
    """
    pytest.importorskip("openrlhf")
    pytest.importorskip("deepspeed")
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


def run_loss(loss_module, batch, **aggregation):
    """Forward and the gradient of the loss with respect to the log-probs."""
    log_probs, old_log_probs, advantages, action_mask = batch
    log_probs = log_probs.clone().requires_grad_(True)
    loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio = loss_module(
        log_probs, old_log_probs, advantages, action_mask=action_mask, rollout_log_probs=None, **aggregation
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
        BandPOPolicyLoss(**margins, dual_clip=dual_clip, token_level_loss=token_level_loss, clip_method=clip_method),
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
        ({"is_correction_level": "token"}, "is_correction_level must be 'off'"),
        ({"dual_clip": 0.5}, "dual_clip must be"),
        ({"clip_method": "bandpo"}, "method must be one of"),
        ({"delta": 0.0}, "delta must be"),
    ],
)
def test_bad_arguments_are_rejected_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        BandPOPolicyLoss(**arguments)


def test_environment_parameters_are_parsed_and_typos_rejected():
    assert bandpo_parameters_from_environment(
        {"BANDPO_CLIP_METHOD": "band", "BANDPO_DELTA": "0.1", "BANDPO_UPPER_MAX": "none", "PATH": "/bin"}
    ) == {"clip_method": "band", "delta": 0.1, "upper_max": None}
    with pytest.raises(ValueError, match="unknown BandPO environment variable.*BANDPO_DELTAA"):
        bandpo_parameters_from_environment({"BANDPO_DELTAA": "0.1"})
    with pytest.raises(ValueError, match="BANDPO_DELTA must be a float"):
        bandpo_parameters_from_environment({"BANDPO_DELTA": "big"})


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


@pytest.mark.parametrize("token_level_loss", [True, False])
def test_minus_infinity_in_padding_gives_the_same_finite_loss_and_gradient(token_level_loss):
    """OpenRLHF aggregates with (loss * mask).sum(): a NaN in padding would poison it."""
    log_probs, old_log_probs, advantages, action_mask = make_batch(seed=8)
    padding = ~action_mask
    padded = (log_probs.masked_fill(padding, -float("inf")), old_log_probs.masked_fill(padding, -float("inf")),
              advantages, action_mask)
    loss_module = BandPOPolicyLoss(dual_clip=3.0, token_level_loss=token_level_loss)
    loss, grad, *_ = run_loss(loss_module, padded)
    clean_loss, clean_grad, *_ = run_loss(loss_module, (log_probs, old_log_probs, advantages, action_mask))
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, clean_loss)
    torch.testing.assert_close(grad, clean_grad)


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
