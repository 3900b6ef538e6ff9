"""The verl 0.9 integration: registered losses, called the way verl calls them.

Runs in the integrations venv (scripts/test-integrations.sh); skipped where verl is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("verl")
torch = pytest.importorskip("torch")

from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, get_policy_loss_fn  # noqa: E402
from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

import bandpo.integrations.verl as bandpo_verl  # noqa: E402
from bandpo.aggregation import LOSS_AGG_MODES  # noqa: E402
from bandpo.loss import policy_loss  # noqa: E402
from bandpo.rules import DCPO, Band, FixedClip  # noqa: E402

MODULE = "bandpo.integrations.verl"
DUAL_CLIP = 10.0
RULES = {
    "bandpo": Band(divergence="kl", delta=0.05, upper_max=10.0),
    "bandpo_clip": FixedClip(eps_low=0.2, eps_high=0.28),
    "bandpo_dcpo": DCPO(eps_low=0.2, eps_high=0.28, upper_max=10.0),
}


def actor_config(loss_mode: str, loss_agg_mode: str, **policy_loss_fields) -> ActorConfig:
    """A real verl actor config as its workers build it, with Clip-Higher margins and dual clip 10."""
    return ActorConfig(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=2,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=DUAL_CLIP,
        loss_agg_mode=loss_agg_mode,
        policy_loss=bandpo_verl.BandPOPolicyLossConfig(loss_mode=loss_mode, **policy_loss_fields),
    )


def make_batch(seed: int, batch: int = 8, tokens: int = 12, empty_row: bool = False) -> dict[str, torch.Tensor]:
    """Rollout tensors whose ratios reach both bounds and the dual clip (r > 10 with A < 0)."""
    generator = torch.Generator().manual_seed(seed)
    old_log_prob = torch.log(torch.rand(batch, tokens, generator=generator, dtype=torch.float64) * 0.98 + 0.01)
    log_ratio = torch.randn(batch, tokens, generator=generator, dtype=torch.float64) * 0.6
    log_ratio[0, :3] = 3.0  # ratio e^3 > 10
    log_prob = (old_log_prob + log_ratio).clamp(max=0.0)
    advantages = torch.randn(batch, generator=generator, dtype=torch.float64).unsqueeze(-1).expand(batch, tokens)
    advantages = advantages.clone()
    advantages[0] = -1.0
    lengths = torch.randint(1, tokens + 1, (batch,), generator=generator)
    response_mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(-1)
    if empty_row:
        response_mask[-1] = False
    return {"old_log_prob": old_log_prob, "log_prob": log_prob, "advantages": advantages, "response_mask": response_mask}


def call_like_verl(loss_mode: str, data: dict[str, torch.Tensor], config: ActorConfig, rollout_is_weights=None):
    """What verl.workers.utils.losses.ppo_loss does: look the loss up by name, call it by keyword."""
    log_prob = data["log_prob"].clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn(config.policy_loss.get("loss_mode", "vanilla"))(
        old_log_prob=data["old_log_prob"],
        log_prob=log_prob,
        advantages=data["advantages"],
        response_mask=data["response_mask"],
        loss_agg_mode=config.loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
    )
    (grad,) = torch.autograd.grad(loss, log_prob)
    return loss.detach(), grad, metrics


def bandpo_reference(loss_mode: str, data: dict[str, torch.Tensor], loss_agg_mode: str):
    """bandpo.policy_loss on the same batch: the value the verl loss must reproduce."""
    log_prob = data["log_prob"].clone().requires_grad_(True)
    loss, metrics = policy_loss(
        log_prob,
        data["old_log_prob"],
        data["advantages"],
        data["response_mask"],
        clip=RULES[loss_mode],
        loss_agg_mode=loss_agg_mode,
        dual_clip=DUAL_CLIP,
    )
    (grad,) = torch.autograd.grad(loss, log_prob)
    return loss.detach(), grad, metrics


def test_loss_modes_are_registered_under_their_names():
    for loss_mode in bandpo_verl.BANDPO_LOSS_MODES:
        assert get_policy_loss_fn(loss_mode).__name__ == f"compute_policy_loss_{loss_mode}"


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("loss_mode", bandpo_verl.BANDPO_LOSS_MODES)
def test_registered_loss_equals_bandpo_policy_loss(loss_mode, loss_agg_mode):
    data = make_batch(seed=1)
    loss, grad, metrics = call_like_verl(loss_mode, data, actor_config(loss_mode, loss_agg_mode))
    expected_loss, expected_grad, expected_metrics = bandpo_reference(loss_mode, data, loss_agg_mode)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(expected_metrics["clip_ratio/region_mean"].item())
    assert metrics["actor/ppo_kl"] == pytest.approx(expected_metrics["policy/ppo_kl"].item())
    assert metrics["actor/bandpo/clip_ratio/low_p_high_share"] == pytest.approx(
        expected_metrics["clip_ratio/low_p_high_share"].item()
    )
    assert all(isinstance(value, float) for value in metrics.values())


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_fully_masked_sequences_are_left_out_like_bandpo(loss_agg_mode):
    data = make_batch(seed=2, empty_row=True)
    loss, grad, _ = call_like_verl("bandpo", data, actor_config("bandpo", loss_agg_mode))
    expected_loss, expected_grad, _ = bandpo_reference("bandpo", data, loss_agg_mode)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_dual_clip_is_read_from_clip_ratio_c():
    data = make_batch(seed=3)
    with_cap, _, metrics = call_like_verl("bandpo", data, actor_config("bandpo", "token-mean"))
    config = actor_config("bandpo", "token-mean")
    object.__setattr__(config, "clip_ratio_c", 1e6)  # the fields are frozen once built
    without_cap, _, _ = call_like_verl("bandpo", data, config)
    assert metrics["actor/pg_clipfrac_lower"] > 0
    assert with_cap < without_cap


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_bandpo_clip_equals_verl_vanilla_loss_and_metrics(loss_agg_mode):
    """With the fixed interval the registered loss must be verl's own PPO loss, number for number."""
    data = make_batch(seed=4, empty_row=True)
    config = actor_config("bandpo_clip", loss_agg_mode)
    loss, grad, metrics = call_like_verl("bandpo_clip", data, config)
    log_prob = data["log_prob"].clone().requires_grad_(True)
    vanilla_loss, vanilla_metrics = compute_policy_loss_vanilla(
        old_log_prob=data["old_log_prob"],
        log_prob=log_prob,
        advantages=data["advantages"],
        response_mask=data["response_mask"],
        loss_agg_mode=loss_agg_mode,
        config=config,
    )
    (vanilla_grad,) = torch.autograd.grad(vanilla_loss, log_prob)
    torch.testing.assert_close(loss, vanilla_loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, vanilla_grad, rtol=1e-12, atol=1e-12)
    for name in ("actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl"):  # logged in float32
        assert metrics[name] == pytest.approx(vanilla_metrics[name], rel=1e-6, abs=1e-9), name


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_loss_is_invariant_to_data_parallel_sharding_and_micro_batching(loss_agg_mode):
    """2 ranks x 2 micro-batches, global_batch_info filled as verl's ppo_loss fills it.

    Each rank sums its micro-batch gradients, data parallelism averages over ranks; the result must be
    the gradient of the full-batch loss.
    """
    data = make_batch(seed=5, batch=8, empty_row=True)
    full_loss, full_grad, _ = bandpo_reference("bandpo", data, loss_agg_mode)
    dp_size = 2
    global_batch_info = {
        "dp_size": dp_size,
        "batch_num_tokens": int(data["response_mask"].sum()),
        "global_batch_size": int((data["response_mask"].sum(-1) > 0).sum()),
        "loss_scale_factor": None,
    }
    total_loss = torch.zeros((), dtype=torch.float64)
    grad = torch.zeros_like(full_grad)
    for rows in torch.arange(8).split(2):  # micro-batches 0,1 on rank 0; 2,3 on rank 1
        config = actor_config("bandpo", loss_agg_mode)
        config.global_batch_info.update(global_batch_info)
        shard = {name: tensor[rows] for name, tensor in data.items()}
        loss, shard_grad, _ = call_like_verl("bandpo", shard, config)
        total_loss += loss / dp_size
        grad[rows] = shard_grad / dp_size
    torch.testing.assert_close(total_loss, full_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, full_grad, rtol=1e-12, atol=1e-12)


def test_rollout_is_weights_scale_each_sequence():
    data = make_batch(seed=6)
    weights = torch.linspace(0.5, 2.0, 8, dtype=torch.float64).unsqueeze(-1).expand_as(data["log_prob"])
    loss, _, _ = call_like_verl("bandpo", data, actor_config("bandpo", "seq-mean-token-mean"), weights)
    per_sequence = [
        bandpo_reference("bandpo", {name: tensor[i : i + 1] for name, tensor in data.items()}, "seq-mean-token-mean")[0]
        for i in range(8)
    ]
    expected = (torch.stack(per_sequence) * weights[:, 0]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_band_parameters_come_from_the_policy_loss_config():
    data = make_batch(seed=7)
    wide, _, wide_metrics = call_like_verl("bandpo", data, actor_config("bandpo", "token-mean", bandpo_delta=0.5))
    log_prob = data["log_prob"].clone()
    expected, _ = policy_loss(
        log_prob, data["old_log_prob"], data["advantages"], data["response_mask"],
        clip=Band(delta=0.5), dual_clip=DUAL_CLIP,
    )
    torch.testing.assert_close(wide, expected, rtol=1e-12, atol=1e-12)
    narrow, _, narrow_metrics = call_like_verl("bandpo", data, actor_config("bandpo", "token-mean"))
    assert wide_metrics["actor/bandpo/bounds/upper_mean"] > narrow_metrics["actor/bandpo/bounds/upper_mean"]


def test_plain_verl_policy_loss_config_uses_published_defaults():
    data = make_batch(seed=8)
    config = actor_config("bandpo", "token-mean")
    object.__setattr__(config, "policy_loss", PolicyLossConfig(loss_mode="bandpo"))
    loss, _, _ = call_like_verl("bandpo", data, config)
    expected, _, _ = bandpo_reference("bandpo", data, "token-mean")
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"bandpo_divergence": "kll"}, "divergence must be one of"), ({"bandpo_delta": -1.0}, "delta must be")],
)
def test_bad_band_parameters_are_rejected_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        bandpo_verl.BandPOPolicyLossConfig(loss_mode="bandpo", **fields)


def test_missing_config_is_rejected():
    data = make_batch(seed=9)
    with pytest.raises(ValueError, match="config must be verl's actor config"):
        get_policy_loss_fn("bandpo")(**data, loss_agg_mode="token-mean", config=None, rollout_is_weights=None)


def test_misspelt_keyword_is_rejected():
    data = make_batch(seed=9)
    with pytest.raises(TypeError):
        get_policy_loss_fn("bandpo")(**data, loss_agg_mod="token-mean", config=actor_config("bandpo", "token-mean"))


def run_fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (no registration inherited from this test process)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_get_policy_loss_fn_finds_bandpo_only_after_the_external_lib_import():
    result = run_fresh_python(
        f"""
        import pytest
        from verl.trainer.ppo.core_algos import get_policy_loss_fn
        from verl.utils.import_utils import import_external_libs
        with pytest.raises(ValueError, match="Unsupported loss mode"):
            get_policy_loss_fn("bandpo")
        import_external_libs("{MODULE}")  # what actor_rollout_ref.model.external_lib triggers
        print(get_policy_loss_fn("bandpo").__module__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [MODULE]


def test_verl_use_external_modules_registers_on_import_of_verl():
    result = run_fresh_python(
        """
        import verl
        from verl.trainer.ppo.core_algos import get_policy_loss_fn
        print(get_policy_loss_fn("bandpo").__module__)
        """,
        VERL_USE_EXTERNAL_MODULES=MODULE,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [MODULE]


COMPOSE_ACTOR_CONFIG = """
    import os, sys, verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass
    overrides = sys.argv[1:] + [
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.n=4",
    ]
    with initialize_config_dir(os.path.join(os.path.dirname(verl.__file__), "trainer/config"), version_base=None):
        config = compose("ppo_trainer", overrides=overrides)
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    policy_loss = actor.policy_loss
    print(type(policy_loss).__name__, policy_loss.loss_mode, policy_loss.get("bandpo_delta"))
"""


def compose_actor_config(*overrides: str) -> subprocess.CompletedProcess:
    """Build verl's actor config from its own ppo_trainer.yaml and command-line overrides."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COMPOSE_ACTOR_CONFIG), *overrides],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_band_parameters_are_settable_from_the_verl_command_line():
    result = compose_actor_config(
        "actor_rollout_ref.actor.policy_loss.loss_mode=bandpo",
        f"actor_rollout_ref.actor.policy_loss._target_={MODULE}.BandPOPolicyLossConfig",
        "+actor_rollout_ref.actor.policy_loss.bandpo_delta=0.1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["BandPOPolicyLossConfig", "bandpo", "0.1"]


def test_misspelt_band_parameter_on_the_command_line_fails():
    result = compose_actor_config(
        f"actor_rollout_ref.actor.policy_loss._target_={MODULE}.BandPOPolicyLossConfig",
        "+actor_rollout_ref.actor.policy_loss.bandpo_dleta=0.1",
    )
    assert result.returncode != 0
    assert "bandpo_dleta" in result.stderr


def test_ray_worker_sees_the_registration_through_external_lib_and_env():
    ray = pytest.importorskip("ray")

    def loss_mode_in_worker(via_env: bool) -> str:
        from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn
        from verl.utils.import_utils import import_external_libs

        if not via_env:
            assert "bandpo" not in POLICY_LOSS_REGISTRY, "worker inherited the registration"
            import_external_libs(MODULE)
        return get_policy_loss_fn("bandpo").__module__

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        plain = ray.remote(num_cpus=1)(loss_mode_in_worker)
        with_env = ray.remote(num_cpus=1, runtime_env={"env_vars": {"VERL_USE_EXTERNAL_MODULES": MODULE}})(
            loss_mode_in_worker
        )
        assert ray.get([plain.remote(False), with_env.remote(True)], timeout=120) == [MODULE, MODULE]
    finally:
        ray.shutdown()


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("loss_mode", bandpo_verl.BANDPO_LOSS_MODES)
def test_minus_infinity_in_padding_gives_the_same_finite_loss_and_gradient(loss_mode, loss_agg_mode):
    """Padding may hold any log-probability (-inf included); it must not reach the loss or its gradient."""
    data = make_batch(seed=5)
    padded = {**data}
    padding = ~data["response_mask"]
    padded["log_prob"] = data["log_prob"].masked_fill(padding, -float("inf"))
    padded["old_log_prob"] = data["old_log_prob"].masked_fill(padding, -float("inf"))
    config = actor_config(loss_mode, loss_agg_mode)
    loss, grad, metrics = call_like_verl(loss_mode, padded, config)
    clean_loss, clean_grad, clean_metrics = call_like_verl(loss_mode, data, config)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, clean_loss)
    torch.testing.assert_close(grad, clean_grad)
    assert metrics == pytest.approx(clean_metrics)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(advantages=d["advantages"].masked_fill(torch.ones_like(d["response_mask"]), float("nan"))),
         "advantages contain NaN"),
        (lambda d: d.update(old_log_prob=d["old_log_prob"][:, :-1]), "old_log_probs must have the shape of log_probs"),
    ],
)
def test_bad_inputs_give_the_errors_of_bandpo_policy_loss(change, message):
    data = make_batch(seed=6)
    change(data)
    with pytest.raises(ValueError, match=message):
        call_like_verl("bandpo", data, actor_config("bandpo", "token-mean"))
    with pytest.raises(ValueError, match=message):
        bandpo_reference("bandpo", data, "token-mean")
