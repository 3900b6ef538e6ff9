"""The verl 0.9 integration: registered losses, called the way verl calls them.

Runs in the integrations venv (scripts/test-integrations.sh); skipped where verl is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from optional_packages import import_if_installed

import_if_installed("verl")
torch = import_if_installed("torch")

from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, get_policy_loss_fn  # noqa: E402
from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

import bandpo.integrations.verl as bandpo_verl  # noqa: E402
from bandpo.aggregation import LOSS_AGG_MODES  # noqa: E402
from bandpo.loss import policy_loss  # noqa: E402
from bandpo.rules import CLIP_METHODS, DCPO, Band, FixedClip, Sided  # noqa: E402

MODULE = "bandpo.integrations.verl"
DUAL_CLIP = 10.0
RULES = {  # each clip method with the margins of actor_config (clip_ratio_low/high 0.2 / 0.28)
    "band": Band(divergence="kl", delta=0.05, upper_max=10.0),
    "band-relax": Band(divergence="kl", delta=0.05, upper_max=10.0, relax=(0.2, 0.28)),
    "band-upper": Sided(FixedClip(eps_low=0.2, eps_high=0.28), Band(divergence="kl", delta=0.05, upper_max=10.0)),
    "band-lower": Sided(Band(divergence="kl", delta=0.05, upper_max=10.0), FixedClip(eps_low=0.2, eps_high=0.28)),
    "clip": FixedClip(eps_low=0.2, eps_high=0.28),
    "clip-higher": FixedClip(eps_low=0.2, eps_high=0.28),
    "dcpo": DCPO(eps_low=0.2, eps_high=0.28, upper_max=10.0),
}


def actor_config(clip_method: str, loss_agg_mode: str, *, margins=(0.2, 0.28), **policy_loss_fields) -> ActorConfig:
    """A real verl actor config as its workers build it (loss_mode bandpo), Clip-Higher margins, dual clip 10."""
    return ActorConfig(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=2,
        clip_ratio_low=margins[0],
        clip_ratio_high=margins[1],
        clip_ratio_c=DUAL_CLIP,
        loss_agg_mode=loss_agg_mode,
        policy_loss=bandpo_verl.BandPOPolicyLossConfig(
            loss_mode="bandpo", bandpo_clip_method=clip_method, **policy_loss_fields
        ),
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


def call_like_verl(data: dict[str, torch.Tensor], config: ActorConfig, rollout_is_weights=None):
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


def bandpo_reference(clip_method: str, data: dict[str, torch.Tensor], loss_agg_mode: str):
    """bandpo.policy_loss on the same batch: the value the verl loss must reproduce."""
    log_prob = data["log_prob"].clone().requires_grad_(True)
    loss, metrics = policy_loss(
        log_prob,
        data["old_log_prob"],
        data["advantages"],
        data["response_mask"],
        clip=RULES[clip_method],
        loss_agg_mode=loss_agg_mode,
        dual_clip=DUAL_CLIP,
    )
    (grad,) = torch.autograd.grad(loss, log_prob)
    return loss.detach(), grad, metrics


def test_one_loss_mode_is_registered_and_the_old_names_are_gone():
    assert get_policy_loss_fn("bandpo").__name__ == "compute_policy_loss_bandpo"
    for old_name in ("bandpo_clip", "bandpo_dcpo"):
        with pytest.raises(ValueError, match="Unsupported loss mode"):
            get_policy_loss_fn(old_name)


def test_every_clip_method_has_a_reference_rule():
    assert set(RULES) == set(CLIP_METHODS)


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("clip_method", CLIP_METHODS)
def test_registered_loss_equals_bandpo_policy_loss(clip_method, loss_agg_mode):
    data = make_batch(seed=1)
    loss, grad, metrics = call_like_verl(data, actor_config(clip_method, loss_agg_mode))
    expected_loss, expected_grad, expected_metrics = bandpo_reference(clip_method, data, loss_agg_mode)
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
    loss, grad, _ = call_like_verl(data, actor_config("band", loss_agg_mode))
    expected_loss, expected_grad, _ = bandpo_reference("band", data, loss_agg_mode)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_dual_clip_is_read_from_clip_ratio_c():
    data = make_batch(seed=3)
    with_cap, _, metrics = call_like_verl(data, actor_config("band", "token-mean"))
    config = actor_config("band", "token-mean")
    object.__setattr__(config, "clip_ratio_c", 1e6)  # the fields are frozen once built
    without_cap, _, _ = call_like_verl(data, config)
    assert metrics["actor/pg_clipfrac_lower"] > 0
    assert with_cap < without_cap


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize(("clip_method", "margins"), [("clip", (0.2, 0.2)), ("clip-higher", (0.2, 0.28))])
def test_fixed_interval_equals_verl_vanilla_loss_and_metrics(clip_method, margins, loss_agg_mode):
    """With the fixed interval the registered loss must be verl's own PPO loss, number for number."""
    data = make_batch(seed=4, empty_row=True)
    config = actor_config(clip_method, loss_agg_mode, margins=margins)
    loss, grad, metrics = call_like_verl(data, config)
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
    full_loss, full_grad, _ = bandpo_reference("band", data, loss_agg_mode)
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
        config = actor_config("band", loss_agg_mode)
        config.global_batch_info.update(global_batch_info)
        shard = {name: tensor[rows] for name, tensor in data.items()}
        loss, shard_grad, _ = call_like_verl(shard, config)
        total_loss += loss / dp_size
        grad[rows] = shard_grad / dp_size
    torch.testing.assert_close(total_loss, full_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, full_grad, rtol=1e-12, atol=1e-12)


def test_rollout_is_weights_scale_each_sequence():
    data = make_batch(seed=6)
    weights = torch.linspace(0.5, 2.0, 8, dtype=torch.float64).unsqueeze(-1).expand_as(data["log_prob"])
    loss, _, _ = call_like_verl(data, actor_config("band", "seq-mean-token-mean"), weights)
    per_sequence = [
        bandpo_reference("band", {name: tensor[i : i + 1] for name, tensor in data.items()}, "seq-mean-token-mean")[0]
        for i in range(8)
    ]
    expected = (torch.stack(per_sequence) * weights[:, 0]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_band_parameters_come_from_the_policy_loss_config():
    data = make_batch(seed=7)
    wide, _, wide_metrics = call_like_verl(data, actor_config("band", "token-mean", bandpo_delta=0.5))
    log_prob = data["log_prob"].clone()
    expected, _ = policy_loss(
        log_prob, data["old_log_prob"], data["advantages"], data["response_mask"],
        clip=Band(delta=0.5), dual_clip=DUAL_CLIP,
    )
    torch.testing.assert_close(wide, expected, rtol=1e-12, atol=1e-12)
    narrow, _, narrow_metrics = call_like_verl(data, actor_config("band", "token-mean"))
    assert wide_metrics["actor/bandpo/bounds/upper_mean"] > narrow_metrics["actor/bandpo/bounds/upper_mean"]


def test_plain_verl_policy_loss_config_uses_published_defaults():
    data = make_batch(seed=8)
    config = actor_config("band", "token-mean")
    object.__setattr__(config, "policy_loss", PolicyLossConfig(loss_mode="bandpo"))
    loss, _, _ = call_like_verl(data, config)
    expected, _, _ = bandpo_reference("band", data, "token-mean")
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bandpo_divergence": "kll"}, "divergence must be one of"),
        ({"bandpo_delta": -1.0}, "delta must be"),
        ({"bandpo_upper_max": 0.5}, "upper_max must be"),
        ({"bandpo_clip_method": "bandpo_clip"}, f"bandpo_clip_method must be one of {', '.join(CLIP_METHODS)}"),
    ],
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
    with pytest.raises(TypeError, match="unexpected keyword argument 'loss_agg_mod'"):
        get_policy_loss_fn("bandpo")(**data, loss_agg_mod="token-mean", config=actor_config("band", "token-mean"))


def run_fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (no registration inherited from this test process)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,  # importing verl takes minutes on a loaded 2-core machine
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


# bandpo check verl: the command line composed with verl's own ppo_trainer config and built as verl's workers do.

REQUIRED = ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.rollout.n=4")
"""Overrides verl's ActorConfig needs whatever the loss (a real command line has them)."""
TWO_OVERRIDES = (f"actor_rollout_ref.model.external_lib={MODULE}", "actor_rollout_ref.actor.policy_loss.loss_mode=bandpo")
TARGET = f"actor_rollout_ref.actor.policy_loss._target_={MODULE}.BandPOPolicyLossConfig"


def check(*overrides: str, environment=None):
    return bandpo_verl.check_verl_overrides([*REQUIRED, *TWO_OVERRIDES, *overrides], environment or {})


def test_the_two_overrides_give_the_published_defaults():
    settings = check()
    assert settings.rule == Band(divergence="kl", delta=0.05, upper_max=10.0)
    assert (settings.clip_method, settings.divergence, settings.delta, settings.upper_max) == ("band", "kl", 0.05, 10.0)
    assert (settings.dual_clip, settings.loss_agg_mode, settings.notes) == (3.0, "token-mean", ())


def test_band_parameters_are_settable_from_the_verl_command_line():
    settings = check(
        TARGET,
        "+actor_rollout_ref.actor.policy_loss.bandpo_clip_method=band-relax",
        "+actor_rollout_ref.actor.policy_loss.bandpo_delta=0.1",
        "+actor_rollout_ref.actor.policy_loss.bandpo_upper_max=null",
        "actor_rollout_ref.actor.clip_ratio_high=0.28",
        "actor_rollout_ref.actor.clip_ratio_c=10",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
        "actor_rollout_ref.actor.loss_scale_factor=4096",
    )
    assert settings.rule == Band(delta=0.1, upper_max=None, relax=(0.2, 0.28))
    assert (settings.clip_ratio_low, settings.clip_ratio_high, settings.dual_clip) == (0.2, 0.28, 10.0)
    assert (settings.loss_agg_mode, settings.loss_scale_factor) == ("seq-mean-token-sum-norm", 4096)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((TARGET, "actor_rollout_ref.actor.policy_loss.bandpo_delta=0.1"),
         r"actor_rollout_ref.actor.policy_loss.bandpo_delta is not in verl's config: add it with a leading '\+'"),
        (("+actor_rollout_ref.actor.policy_loss.bandpo_delta=0.1",),
         r"bandpo_delta is not a field of verl.workers.config.PolicyLossConfig: select BandPO's config with "
         rf"actor_rollout_ref.actor.policy_loss._target_={MODULE}.BandPOPolicyLossConfig"),
        ((TARGET, "+actor_rollout_ref.actor.policy_loss.bandpo_dleta=0.1"),
         r"bandpo_dleta is not a field of BandPOPolicyLossConfig \(did you mean bandpo_delta\?\)"),
        ((TARGET, "+actor_rollout_ref.actor.policy_loss.bandpo_clip_method=bandpo_clip"),
         f"bandpo_clip_method must be one of {', '.join(CLIP_METHODS)}, got 'bandpo_clip'"),
        ((TARGET, "+actor_rollout_ref.actor.policy_loss.bandpo_divergence=js"), "divergence must be one of"),
        (("actor_rollout_ref.actor.clip_ratio_low=1.5",), r"actor.clip_ratio_low must be a number in \[0, 1\)"),
        (("actor_rollout_ref.actor.clip_ratio_c=1",), "actor.clip_ratio_c must be a number > 1"),
        (("actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",),
         "loss_mode is 'vanilla', so BandPO is not used: add actor_rollout_ref.actor.policy_loss.loss_mode=bandpo"),
        (("actor_rollout_ref.model.external_lib=null",),
         f"nothing registers loss_mode=bandpo in verl's workers: add actor_rollout_ref.model.external_lib={MODULE}"),
        (("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=null",), "verl rejected the configuration: .*micro_batch"),
    ],
    ids=["missing-plus", "plus-without-target", "typo", "clip-method", "divergence", "margin", "dual-clip",
         "loss-mode", "external-lib", "verl-own-check"],
)
def test_wrong_command_lines_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        check(*overrides)


def test_verl_use_external_modules_in_the_environment_registers_too():
    settings = check("actor_rollout_ref.model.external_lib=null", environment={"VERL_USE_EXTERNAL_MODULES": MODULE})
    assert settings.clip_method == "band"


def test_bypass_mode_in_the_legacy_trainer_is_refused_and_noted_in_v1():
    with pytest.raises(ValueError, match=r"bypass_mode=true in verl's legacy trainer \(trainer.use_v1=false\) replaces"):
        check("algorithm.rollout_correction.bypass_mode=true", "trainer.use_v1=false")
    settings = check("algorithm.rollout_correction.bypass_mode=true")  # v1, verl's default: loss_mode is kept
    assert settings.notes == ("bypass mode: the old log-probs are the rollout engine's, so the band is computed from "
                              "pi_rollout",)
    assert check("trainer.use_v1=false").notes == ()


def test_clip_ratio_c_inf_turns_the_dual_clip_off():
    assert check("actor_rollout_ref.actor.clip_ratio_c=inf").dual_clip is None


def test_check_command_prints_the_settings_or_the_fix(capsys):
    from bandpo.cli.main import main

    assert main(["check", "verl", *REQUIRED, *TWO_OVERRIDES, TARGET,
                 "+actor_rollout_ref.actor.policy_loss.bandpo_delta=0.1"]) == 0
    lines = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()[1:]]
    settings = {name: value for name, value in (line if len(line) == 2 else (line[0], "") for line in lines)}
    assert settings["delta"] == "0.1" and settings["divergence"] == "kl" and settings["upper_max"] == "10"
    assert main(["check", "verl", *REQUIRED, *TWO_OVERRIDES, TARGET,
                 "actor_rollout_ref.actor.policy_loss.bandpo_delta=0.1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "add it with a leading '+'" in captured.err


def test_bypass_mode_replacing_bandpo_fails_loudly_at_run_time():
    """verl's legacy trainer imports apply_bypass_mode by name at every step, after the driver imported the
    external lib; the name it then gets refuses to replace loss_mode=bandpo and passes other modes on."""
    from omegaconf import OmegaConf
    from verl.protocol import DataProto

    def legacy_trainer_step(loss_mode: str) -> None:
        from verl.trainer.ppo.rollout_corr_helper import apply_bypass_mode

        apply_bypass_mode(
            batch=DataProto.from_single_dict({"responses": torch.zeros(2, 3)}),
            rollout_corr_config=OmegaConf.create({"bypass_mode": True}),
            policy_loss_config=OmegaConf.create({"loss_mode": loss_mode}),
        )

    with pytest.raises(bandpo_verl.BypassModeError, match="set trainer.use_v1=true .* or algorithm.rollout_correction"):
        legacy_trainer_step("bandpo")
    with pytest.raises(ValueError, match="bypass_mode=True requires rollout_log_probs"):  # verl's own, reached
        legacy_trainer_step("vanilla")
    bandpo_verl.guard_bypass_mode()  # idempotent: still one wrapper around verl's function
    from verl.trainer.ppo import rollout_corr_helper

    assert not getattr(rollout_corr_helper.apply_bypass_mode.__wrapped__, "bandpo_guard", False)


def test_ray_worker_sees_the_registration_through_external_lib_and_env():
    ray = import_if_installed("ray")

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
        assert ray.get([plain.remote(False), with_env.remote(True)], timeout=600) == [MODULE, MODULE]
    finally:
        ray.shutdown()


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("clip_method", CLIP_METHODS)
def test_minus_infinity_in_padding_gives_the_same_finite_loss_and_gradient(clip_method, loss_agg_mode):
    """Padding may hold any log-probability (-inf included); it must not reach the loss or its gradient."""
    data = make_batch(seed=5)
    padded = {**data}
    padding = ~data["response_mask"]
    padded["log_prob"] = data["log_prob"].masked_fill(padding, -float("inf"))
    padded["old_log_prob"] = data["old_log_prob"].masked_fill(padding, -float("inf"))
    config = actor_config(clip_method, loss_agg_mode)
    loss, grad, metrics = call_like_verl(padded, config)
    clean_loss, clean_grad, clean_metrics = call_like_verl(data, config)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, clean_loss)
    torch.testing.assert_close(grad, clean_grad)
    assert metrics == pytest.approx(clean_metrics)


VERL_LOSS_AGG_MODES = (*LOSS_AGG_MODES, "token-sum")
PADDING_VALUES = {"+inf": float("inf"), "-inf": -float("inf"), "nan": float("nan")}


@pytest.mark.parametrize("loss_agg_mode", VERL_LOSS_AGG_MODES)
@pytest.mark.parametrize("value", PADDING_VALUES.values(), ids=PADDING_VALUES.keys())
@pytest.mark.parametrize("filled", ["advantages", "log_prob", "old_log_prob", "rollout_is_weights", "all"])
def test_padding_contributes_nothing_whatever_it_holds(filled, value, loss_agg_mode):
    """+-inf or NaN at padded positions of any input, verl's rollout_is_weights included, leave the loss, its
    gradient and every metric those of clean padding (issue 17, reproducer 8)."""
    data = make_batch(seed=12, empty_row=True)
    padding = ~data["response_mask"]
    weights = torch.linspace(0.5, 2.0, 8, dtype=torch.float64).unsqueeze(-1).expand_as(data["log_prob"])
    dirty = {**data, "rollout_is_weights": weights}
    for name in ("advantages", "log_prob", "old_log_prob", "rollout_is_weights"):
        if filled in (name, "all"):
            dirty[name] = dirty[name].masked_fill(padding, value)
    config = actor_config("band", loss_agg_mode)
    loss, grad, metrics = call_like_verl(data, config, weights)
    dirty_weights = dirty.pop("rollout_is_weights")
    dirty_loss, dirty_grad, dirty_metrics = call_like_verl(dirty, config, dirty_weights)
    assert torch.isfinite(dirty_loss) and padding.sum() >= 12
    assert dirty_loss.item() == loss.item()
    assert torch.equal(dirty_grad, grad)
    assert dirty_metrics == metrics


def test_clip_ratio_c_inf_is_verl_vanilla_without_a_dual_clip():
    """verl's own loss accepts clip_ratio_c = inf (nothing capped); so does bandpo, as dual_clip=None."""
    data = make_batch(seed=13)
    config = actor_config("clip-higher", "token-mean")
    object.__setattr__(config, "clip_ratio_c", float("inf"))
    loss, grad, metrics = call_like_verl(data, config)
    log_prob = data["log_prob"].clone().requires_grad_(True)
    vanilla_loss, vanilla_metrics = compute_policy_loss_vanilla(
        old_log_prob=data["old_log_prob"], log_prob=log_prob, advantages=data["advantages"],
        response_mask=data["response_mask"], loss_agg_mode="token-mean", config=config,
    )
    (vanilla_grad,) = torch.autograd.grad(vanilla_loss, log_prob)
    torch.testing.assert_close(loss, vanilla_loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, vanilla_grad, rtol=1e-12, atol=1e-12)
    assert metrics["actor/pg_clipfrac_lower"] == vanilla_metrics["actor/pg_clipfrac_lower"] == 0.0
    log_prob = data["log_prob"].clone()
    expected, _ = policy_loss(log_prob, data["old_log_prob"], data["advantages"], data["response_mask"],
                              clip=FixedClip(0.2, 0.28), dual_clip=None)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


HAND_BUILT = {
    "clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0,
    "policy_loss": {"loss_mode": "bandpo"}, "global_batch_info": {},
}


@pytest.mark.parametrize("missing", ["clip_ratio_c", "policy_loss", "global_batch_info", "clip_ratio"])
def test_a_hand_built_config_lacking_a_key_is_refused_naming_it(missing):
    from omegaconf import OmegaConf

    fields = {name: value for name, value in HAND_BUILT.items() if name != missing}
    if missing == "clip_ratio":  # needed only where a margin is unset
        fields["clip_ratio_low"] = None
    config = OmegaConf.create(fields)
    OmegaConf.set_struct(config, True)  # as Hydra builds it: a missing key raises
    data = make_batch(seed=14)
    with pytest.raises(ValueError, match=rf"verl's actor config has no actor.{missing}; config must be verl's"):
        get_policy_loss_fn("bandpo")(**data, loss_agg_mode="token-mean", config=config, rollout_is_weights=None)
    complete = OmegaConf.create(HAND_BUILT)
    OmegaConf.set_struct(complete, True)
    loss, _ = get_policy_loss_fn("bandpo")(**data, loss_agg_mode="token-mean", config=complete, rollout_is_weights=None)
    assert torch.isfinite(loss)


# verl's divisor for seq-mean-token-sum-norm, pinned on verl's own agg_loss (issue 18: not T alone).

def test_verl_agg_loss_divides_seq_mean_token_sum_norm_by_sequences_times_horizon():
    """verl 0.9.1's agg_loss, seq-mean-token-sum-norm, on L (3 x 4) with the last row fully masked:

        sum_{i,t} L m * dp_size / (G * C)

    G = global_batch_size when given (verl's trainer passes ppo_mini_batch_size * rollout.n: every sequence of
    the mini-batch), else the number of rows with a valid token; C = loss_scale_factor when given, else T.
    Here sum L m = 1 + 2 + 3 + 5 = 11 and T = 4.
    """
    from verl.trainer.ppo.core_algos import agg_loss

    from bandpo.aggregation import aggregate

    loss = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 100.0, 100.0, 100.0], [7.0, 7.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)

    def verl(**global_batch_info):
        return agg_loss(loss, mask, "seq-mean-token-sum-norm", **global_batch_info).item()

    assert verl() == pytest.approx(11 / (2 * 4))  # G = 2 rows with a valid token
    assert verl(global_batch_size=3) == pytest.approx(11 / (3 * 4))
    assert verl(global_batch_size=3, loss_scale_factor=10) == pytest.approx(11 / (3 * 10))
    assert verl(dp_size=2, global_batch_size=6, batch_num_tokens=8) == pytest.approx(11 * 2 / (6 * 4))
    assert verl() != pytest.approx(11 / 4)  # not T alone
    # bandpo's aggregate divides by B * T with B every row: verl's value where G = B, as verl's trainer sets it
    assert aggregate(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(verl(global_batch_size=3))
    assert aggregate(loss[:2], mask[:2], "seq-mean-token-sum-norm").item() == pytest.approx(verl())


def test_registered_sum_norm_loss_equals_policy_loss_with_global_batch_info_as_verl_fills_it():
    """With an empty row, verl's trainer passes global_batch_size = every sequence of the mini-batch, and the
    registered loss is policy_loss's B * T; without it verl counts only the rows with a valid token."""
    data = make_batch(seed=15, empty_row=True)
    expected, expected_grad, _ = bandpo_reference("band", data, "seq-mean-token-sum-norm")
    config = actor_config("band", "seq-mean-token-sum-norm")
    config.global_batch_info.update(dp_size=1, batch_num_tokens=None, global_batch_size=8, loss_scale_factor=None)
    loss, grad, _ = call_like_verl(data, config)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    local_loss, _, _ = call_like_verl(data, actor_config("band", "seq-mean-token-sum-norm"))
    torch.testing.assert_close(local_loss, expected * 8 / 7, rtol=1e-12, atol=1e-12)


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
        call_like_verl(data, actor_config("band", "token-mean"))
    with pytest.raises(ValueError, match=message):
        bandpo_reference("band", data, "token-mean")


def test_band_relax_margins_come_from_clip_ratio_low_and_high():
    """band-relax widens the band to [1 - clip_ratio_low, 1 + clip_ratio_high]; with zero margins it is band."""
    data = make_batch(seed=11)
    band_loss, _, band_metrics = call_like_verl(data, actor_config("band", "token-mean"))
    relaxed_config = actor_config("band-relax", "token-mean", margins=(0.5, 0.6))
    relaxed_loss, _, relaxed_metrics = call_like_verl(data, relaxed_config)
    expected, _ = policy_loss(
        data["log_prob"], data["old_log_prob"], data["advantages"], data["response_mask"],
        clip=Band(relax=(0.5, 0.6)), dual_clip=DUAL_CLIP,
    )
    torch.testing.assert_close(relaxed_loss, expected, rtol=1e-12, atol=1e-12)
    assert relaxed_metrics["actor/bandpo/bounds/upper_mean"] >= 1.6 > band_metrics["actor/bandpo/bounds/upper_mean"]
    assert relaxed_metrics["actor/bandpo/bounds/lower_mean"] <= 0.5 < band_metrics["actor/bandpo/bounds/lower_mean"]
    assert relaxed_metrics["actor/pg_clipfrac"] < band_metrics["actor/pg_clipfrac"]
    zero_margins, _, _ = call_like_verl(data, actor_config("band-relax", "token-mean", margins=(0.0, 0.0)))
    torch.testing.assert_close(zero_margins, band_loss, rtol=0, atol=0)


# BandPO and DPPO (SPEC §9): verl's dppo_kl / dppo_tv keep a token's gradient unless the binary divergence
# between Bern(p_old) and Bern(p) exceeds the radius in the direction the advantage pushes. By the two-point
# lemma that is "r inside Band_{f, delta}(p_old)" for f = kl, tv, so the per-token gradients must agree.

DPPO_DELTA = 0.05
DPPO_EDGE_MARGIN = 1e-3
"""Tokens whose ratio lies within this relative distance of a bound are left out of the comparison (DPPO
adds 1e-8 inside its binary-KL logarithm, which moves its edge by up to ~1e-5)."""


def dppo_config(divergence: str, *, clip_ratio_c: float, upper_max: float | None = None) -> ActorConfig:
    """One config both losses read: DPPO's radius is clip_ratio(_low/_high) = delta, its truncation C and our
    dual clip both clip_ratio_c; BandPO's band with the same divergence and delta, no cap by default."""
    return ActorConfig(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=2,
        clip_ratio=DPPO_DELTA,
        clip_ratio_low=DPPO_DELTA,
        clip_ratio_high=DPPO_DELTA,
        clip_ratio_c=clip_ratio_c,
        loss_agg_mode="token-mean",
        policy_loss=bandpo_verl.BandPOPolicyLossConfig(
            loss_mode="bandpo", bandpo_clip_method="band", bandpo_divergence=divergence, bandpo_delta=DPPO_DELTA,
            bandpo_upper_max=upper_max,
        ),
    )


def dppo_batch(seed: int, batch: int = 64, tokens: int = 48) -> dict[str, torch.Tensor]:
    """Old probabilities over (0.01, 0.99), ratios spread across both bounds, both signs of advantage, padding."""
    generator = torch.Generator().manual_seed(seed)
    old_log_prob = torch.log(torch.rand(batch, tokens, generator=generator, dtype=torch.float64) * 0.98 + 0.01)
    log_ratio = torch.randn(batch, tokens, generator=generator, dtype=torch.float64) * 0.5
    log_prob = old_log_prob + log_ratio
    log_prob = torch.where(log_prob < 0, log_prob, old_log_prob - log_ratio)  # p < 1: reflect, do not pile up at 1
    advantages = torch.randn(batch, tokens, generator=generator, dtype=torch.float64)
    lengths = torch.randint(tokens // 2, tokens + 1, (batch,), generator=generator)
    response_mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(-1)
    return {
        "old_log_prob": old_log_prob, "log_prob": log_prob, "advantages": advantages, "response_mask": response_mask
    }


def call_dppo(name: str, data: dict[str, torch.Tensor], config: ActorConfig):
    log_prob = data["log_prob"].clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn(name)(
        old_log_prob=data["old_log_prob"], log_prob=log_prob, advantages=data["advantages"],
        response_mask=data["response_mask"], loss_agg_mode=config.loss_agg_mode, config=config, rollout_is_weights=None,
    )
    (grad,) = torch.autograd.grad(loss, log_prob)
    return loss.detach(), grad, metrics


@pytest.mark.parametrize("divergence", ["kl", "tv"])
def test_band_gradient_equals_dppo_token_by_token(divergence):
    """Same trust region, same gradient mask: d loss / d log pi agree on every token away from the band's edges.

    token-mean over the same mask makes each token's gradient its own (-A r / N or 0), so the comparison is
    per token. clip_ratio_c = 1e6 is beyond every ratio here (r <= 1/p_old <= 100): no truncation, no dual clip.
    """
    data = dppo_batch(seed=21)
    config = dppo_config(divergence, clip_ratio_c=1e6)
    loss, grad, metrics = call_like_verl(data, config)
    dppo_loss, dppo_grad, dppo_metrics = call_dppo(f"dppo_{divergence}", data, config)

    lower, upper = Band(divergence=divergence, delta=DPPO_DELTA, upper_max=None).bounds(data["old_log_prob"])
    ratio = torch.exp(data["log_prob"] - data["old_log_prob"])
    valid = data["response_mask"]
    away_from_edges = ((ratio - lower).abs() > DPPO_EDGE_MARGIN * lower) & (
        (ratio - upper).abs() > DPPO_EDGE_MARGIN * upper
    )
    compared = valid & away_from_edges
    assert compared.sum() >= 0.99 * valid.sum()
    positive, negative = data["advantages"] > 0, data["advantages"] < 0
    cut = compared & (((ratio > upper) & positive) | ((ratio < lower) & negative))
    for side in (positive & (ratio > upper), positive & (ratio < lower), negative & (ratio < lower),
                 negative & (ratio > upper), positive & (ratio > 1), negative & (ratio < 1)):
        assert (compared & side).sum() >= 20  # every case of the two-sided mask is exercised
    assert (grad[cut] == 0).all() and (dppo_grad[cut] == 0).all()
    assert (grad[compared & ~cut] != 0).all()
    torch.testing.assert_close(grad[compared], dppo_grad[compared], rtol=1e-12, atol=1e-15)
    assert (grad[~valid] == 0).all() and (dppo_grad[~valid] == 0).all()
    # the share of cut tokens is the same too (up to the tokens at the edges)
    edge_share = ((valid & ~away_from_edges).sum() / valid.sum()).item()
    assert abs(metrics["actor/pg_clipfrac"] - dppo_metrics["actor/pg_clipfrac"]) <= edge_share + 1e-6
    # ... but the losses are different functions: -A r against -A sg(r) log pi
    assert not torch.isclose(loss, dppo_loss)


@pytest.mark.parametrize("divergence", ["kl", "tv"])
def test_band_and_dppo_differ_by_the_cap_and_the_truncation(divergence):
    """Where they part: BandPO's upper_max and dual clip versus DPPO's truncated ratio min(r, C).

    Tokens (p_old, p, A), token-mean over 4 tokens, C = clip_ratio_c = 3:
      0  p_old 0.001 -> 0.012 (r 12), A > 0: inside the band (upper ~ 49 kl, 51 tv) but above upper_max 10 —
         BandPO cuts it, DPPO keeps -A min(r, C) = -3A.
      1  p_old 0.1 -> 0.5 (r 5), A < 0: the dual clip caps BandPO's loss at -C A (gradient 0); DPPO keeps
         -A min(r, C) = -3A.
      2  p_old 0.01 -> 0.05 (r 5), A > 0, inside the band: BandPO -A r = -5A, DPPO truncates to -3A.
      3  p_old 0.5 -> 0.45 (r 0.9), A > 0, inside the band and below C: the same, -0.9A.
    """
    old_p = torch.tensor([[0.001, 0.1, 0.01, 0.5]], dtype=torch.float64)
    new_p = torch.tensor([[0.012, 0.5, 0.05, 0.45]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, -1.0, 1.0, 1.0]], dtype=torch.float64)
    data = {"old_log_prob": old_p.log(), "log_prob": new_p.log(), "advantages": advantages,
            "response_mask": torch.ones_like(old_p, dtype=torch.bool)}
    config = dppo_config(divergence, clip_ratio_c=3.0, upper_max=10.0)
    _, grad, _ = call_like_verl(data, config)
    _, dppo_grad, _ = call_dppo(f"dppo_{divergence}", data, config)
    ratio = new_p / old_p
    expected = torch.tensor([[0.0, 0.0, -ratio[0, 2] / 4, -ratio[0, 3] / 4]], dtype=torch.float64)
    expected_dppo = torch.tensor([[-3 / 4, 3 / 4, -3 / 4, -ratio[0, 3] / 4]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(dppo_grad, expected_dppo)
    uncapped_config = dppo_config(divergence, clip_ratio_c=1e6, upper_max=None)
    _, uncapped_grad, _ = call_like_verl(data, uncapped_config)
    _, untruncated_grad, _ = call_dppo(f"dppo_{divergence}", data, uncapped_config)
    torch.testing.assert_close(uncapped_grad, untruncated_grad, rtol=1e-12, atol=1e-15)


EXAMPLE_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "verl", "run_qwen2.5-3b_dapo.sh")
EXAMPLE_METHODS = {  # script argument: (bandpo_clip_method, clip_ratio_low, clip_ratio_high)
    "bandpo": ("band", 0.2, 0.2),
    "band-relax": ("band-relax", 0.2, 0.28),
    "grpo": ("clip", 0.2, 0.2),
    "clip-higher": ("clip-higher", 0.2, 0.28),
    "dcpo": ("dcpo", 0.16, 0.2),
}


def test_example_script_overrides_build_verl_configs(tmp_path):
    """The verl recipe's command line, every method, passes ``bandpo check verl`` with the method's rule.

    A stand-in ``python3`` on PATH records the arguments the script would pass to verl.trainer.main_ppo.
    """
    stub = tmp_path / "bin" / "python3"
    stub.parent.mkdir()
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGUMENTS_FILE"\n')
    stub.chmod(0o755)
    paths = []
    for method in EXAMPLE_METHODS:
        path = tmp_path / method
        env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "ARGUMENTS_FILE": str(path),
               "DATA_DIR": "/data"}
        subprocess.run(["bash", EXAMPLE_SCRIPT, method], env=env, check=True, timeout=60)
        assert path.read_text().splitlines()[:2] == ["-m", "verl.trainer.main_ppo"]
        paths.append(str(path))
    bad = subprocess.run(["bash", EXAMPLE_SCRIPT, "bandpo_clip"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "method must be one of" in bad.stderr
    for method, path in zip(EXAMPLE_METHODS, paths, strict=True):
        overrides = [line for line in open(path).read().splitlines() if line][2:]  # after -m verl.trainer.main_ppo
        settings = bandpo_verl.check_verl_overrides(overrides, {})
        clip_method, low, high = EXAMPLE_METHODS[method]
        assert (settings.clip_method, settings.clip_ratio_low, settings.clip_ratio_high) == (clip_method, low, high)
        assert settings.dual_clip == 10.0 and settings.loss_agg_mode == "seq-mean-token-mean", method
