"""BandPOConfig / BandPOTrainer on a tiny Llama (no network)."""

import functools
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from optional_packages import import_if_installed
from packaging.version import Version

import_if_installed("trl")
os.environ["HF_HUB_OFFLINE"] = "1"

from datasets import Dataset  # noqa: E402
from tiny_models import (  # noqa: E402
    TINY_TRAINING_ARGS,
    build_tiny_model,
    build_tiny_tokenizer,
    reward_sevens,
    save_tiny_model,
)
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from bandpo import Band, policy_loss  # noqa: E402
from bandpo.integrations import trl as bandpo_trl  # noqa: E402
from bandpo.integrations.trl import (  # noqa: E402
    SUPPORTED_TRL,
    BandPOConfig,
    BandPOTrainer,
    TRLCompatibilityError,
    check_trl_version,
    never_off_policy,
)
from bandpo.rules import CLIP_METHODS  # noqa: E402

TESTS = Path(__file__).parent


def prompt_dataset(count=16):
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"what is {i} + 4 ?"}] for i in range(count)]})


def make_trainer(trainer_class, args, model=None, tokenizer=None):
    tokenizer = tokenizer or build_tiny_tokenizer()
    return trainer_class(
        model=model if model is not None else build_tiny_model(tokenizer),
        processing_class=tokenizer,
        reward_funcs=reward_sevens,
        args=args,
        train_dataset=prompt_dataset(),
    )


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"bandpo_clip_method": "bandpo"}, f"bandpo_clip_method must be one of {', '.join(CLIP_METHODS)}"),
        ({"bandpo_divergence": "js"}, "bandpo_divergence must be one of"),
        ({"bandpo_clip_method": "band-relax", "bandpo_divergence": "js"}, "bandpo_divergence must be one of"),
        ({"bandpo_delta": 0.0}, "bandpo_delta must be a number in [1e-06, 1000]"),
        ({"bandpo_delta": -1.0}, "bandpo_delta must be a number in [1e-06, 1000]"),
        ({"bandpo_delta": float("inf")}, "bandpo_delta must be a number in [1e-06, 1000], got inf"),
        ({"bandpo_upper_max": 0.5}, "bandpo_upper_max must be None or a number >= 1"),
        ({"bandpo_clip_method": "dcpo", "bandpo_dcpo_eps_low": -0.1}, "bandpo_dcpo_eps_low must be a finite number >= 0"),
        ({"bandpo_clip_method": "dcpo", "bandpo_dcpo_eps_high": "x"}, "bandpo_dcpo_eps_high must be a finite number >= 0"),
        ({"bandpo_clip_method": "band-relax", "epsilon": 1.0}, "epsilon must be a number in [0, 1), got 1.0"),
        ({"bandpo_clip_method": "clip", "epsilon_high": -0.1}, "epsilon_high must be a finite number >= 0"),
        ({"loss_type": "sapo"}, "loss_type 'sapo' does not clip the ratio"),
        ({"loss_type": "vespo"}, "loss_type 'vespo' does not clip the ratio"),
        ({"loss_type": "cispo", "bandpo_clip_method": "clip"}, "use trl.GRPOTrainer"),
        ({"loss_type": "cispo", "bandpo_clip_method": "clip-higher"}, "use trl.GRPOTrainer"),
        ({"importance_sampling_level": "sequence"}, "needs importance_sampling_level='token'"),
        ({"importance_sampling_level": "sequence", "bandpo_clip_method": "band-relax"}, "needs importance_sampling_level"),
        ({"importance_sampling_level": "sequence", "bandpo_clip_method": "dcpo"}, "needs importance_sampling_level"),
        # TRL's dual clip, checked as policy_loss checks dual_clip (TRL trains on loss 0 with NaN)
        ({"delta": float("nan")}, "delta must be None or a finite number > 1, got nan"),
        ({"delta": -1.0}, "delta must be None or a finite number > 1, got -1.0"),
        ({"delta": 0.5}, "delta must be None or a finite number > 1, got 0.5"),
        ({"delta": 1.0}, "delta must be None or a finite number > 1, got 1.0"),
        ({"delta": float("inf")}, "delta must be None or a finite number > 1, got inf"),
    ],
)
def test_bad_config_names_the_field(tmp_path, fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        BandPOConfig(output_dir=str(tmp_path), **TINY_TRAINING_ARGS, **fields)


@pytest.mark.parametrize("delta", [None, 1.0001, 3, 10.0, float("nan"), -1.0, 0.5, 1.0, float("inf")])
def test_trl_dual_clip_is_checked_as_policy_loss_checks_its_dual_clip(tmp_path, delta):
    """BandPOConfig accepts a delta exactly when policy_loss accepts it as dual_clip, naming its own field."""
    def outcome(call, name):
        try:
            call()
        except ValueError as error:
            assert str(error).startswith(f"{name} must be None or a finite number > 1"), error
            return "refused"
        return "accepted"

    config = outcome(lambda: BandPOConfig(output_dir=str(tmp_path), delta=delta, **TINY_TRAINING_ARGS), "delta")
    loss = outcome(
        lambda: policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([-1.0]), torch.ones(1, 3), clip=Band(), dual_clip=delta),
        "dual_clip",
    )
    assert config == loss
    assert config == ("accepted" if delta is None or (delta > 1 and delta != float("inf")) else "refused")


def test_config_rules_and_defaults(tmp_path):
    band = BandPOConfig(output_dir=str(tmp_path), **TINY_TRAINING_ARGS).bound_rule()
    assert isinstance(band, Band) and band.delta == 0.05 and band.divergence == "kl" and band.upper_max == 10.0
    assert band.relax is None
    higher = BandPOConfig(output_dir=str(tmp_path), bandpo_clip_method="clip-higher", **TINY_TRAINING_ARGS)
    assert higher.epsilon_high == 0.28
    lower, upper = higher.bound_rule().bounds(torch.tensor([-1.0]))
    assert lower.item() == pytest.approx(0.8) and upper.item() == pytest.approx(1.28)
    assert isinstance(BandPOConfig(output_dir=str(tmp_path), **TINY_TRAINING_ARGS), GRPOConfig)


def test_band_relax_takes_its_margins_from_epsilon_and_epsilon_high(tmp_path):
    def rule(**fields):
        return BandPOConfig(output_dir=str(tmp_path), bandpo_clip_method="band-relax", **TINY_TRAINING_ARGS, **fields)

    default = rule(bandpo_divergence="tv", bandpo_delta=0.01, bandpo_upper_max=4.0)
    assert default.epsilon_high == 0.28  # as clip-higher: DAPO's margin when epsilon_high is unset
    relaxed = default.bound_rule()
    assert isinstance(relaxed, Band) and relaxed.relax == (0.2, 0.28)
    assert (relaxed.divergence, relaxed.delta, relaxed.upper_max) == ("tv", 0.01, 4.0)
    assert rule(epsilon=0.1, epsilon_high=0.5).bound_rule().relax == (0.1, 0.5)
    # tv's band at p = 0.5 is 1 -+ 0.02: the relax margins widen it; at p = 0.001 the band (capped at 4) is wider.
    lower, upper = relaxed.bounds(torch.log(torch.tensor([0.5, 0.001], dtype=torch.float64)))
    torch.testing.assert_close(lower, torch.tensor([0.8, 0.0], dtype=torch.float64))
    torch.testing.assert_close(upper, torch.tensor([1.28, 4.0], dtype=torch.float64))


def test_old_field_names_are_unknown_to_trl_parser(tmp_path):
    from trl import TrlParser

    config = tmp_path / "old.yaml"
    config.write_text(f"output_dir: {tmp_path}\nuse_cpu: true\nbf16: false\nclip_method: band\nupper_max: 5\n")
    with pytest.raises(ValueError, match=re.escape("Unknown arguments from config file: ['--clip_method', 'band', '--upper_max'")):
        TrlParser((BandPOConfig,)).parse_args_and_config(args=["--config", str(config)])
    with pytest.raises(TypeError, match="clip_method"):
        BandPOConfig(output_dir=str(tmp_path), clip_method="band", **TINY_TRAINING_ARGS)


def test_example_yaml_is_read_by_trl_parser(tmp_path):
    """examples/trl/bandpo_qwen2.5-3b.yaml, as examples/trl/train_bandpo.py parses it (CPU overrides only)."""
    from trl import ModelConfig, ScriptArguments, TrlParser

    example = TESTS.parent / "examples" / "trl" / "bandpo_qwen2.5-3b.yaml"
    overrides = ["--bf16", "false", "--use_cpu", "true", "--output_dir", str(tmp_path)]
    _, config, _ = TrlParser((ScriptArguments, BandPOConfig, ModelConfig)).parse_args_and_config(
        args=["--config", str(example), *overrides]
    )
    assert (config.bandpo_clip_method, config.bandpo_divergence, config.bandpo_delta) == ("band", "kl", 0.05)
    assert config.bandpo_upper_max == 10.0 and config.delta == 10.0 and config.loss_type == "grpo"
    assert not never_off_policy(config)  # 64 micro-batches per generation, 16 per optimizer step


def test_never_off_policy_follows_trl(tmp_path):
    def config(**fields):
        return BandPOConfig(output_dir=str(tmp_path), **{**TINY_TRAINING_ARGS, **fields})

    assert never_off_policy(config(num_iterations=1))
    assert not never_off_policy(config(num_iterations=2))
    assert not never_off_policy(config(steps_per_generation=2))
    assert never_off_policy(config(num_iterations=2, gradient_accumulation_steps=2, steps_per_generation=1))
    assert not never_off_policy(config(num_iterations=1), use_vllm_importance_sampling=True)


def test_on_policy_configuration_warns_loudly(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bandpo.integrations.trl"):
        make_trainer(BandPOTrainer, BandPOConfig(output_dir=str(tmp_path), num_iterations=1, **TINY_TRAINING_ARGS))
    assert "NEVER BIND" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bandpo.integrations.trl"):
        make_trainer(BandPOTrainer, BandPOConfig(output_dir=str(tmp_path), num_iterations=2, **TINY_TRAINING_ARGS))
    assert "NEVER BIND" not in caplog.text


def test_trainer_requires_bandpo_config(tmp_path):
    with pytest.raises(TypeError, match="BandPOConfig"):
        make_trainer(BandPOTrainer, GRPOConfig(output_dir=str(tmp_path), **TINY_TRAINING_ARGS))


# --- the loss on a fixed batch -------------------------------------------------------------------


def fixed_batch(trainer, seed=1):
    """A batch with padding, mixed-sign advantages and old log-probs 0.5 nats off the current ones."""
    generator = torch.Generator().manual_seed(seed)
    vocab = trainer.processing_class.vocab_size
    prompt_ids = torch.randint(5, vocab, (6, 5), generator=generator)
    completion_ids = torch.randint(5, vocab, (6, 7), generator=generator)
    completion_mask = torch.ones(6, 7, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_mask[4, 2:] = 0
    prompt_mask = torch.ones_like(prompt_ids)
    with torch.no_grad():
        log_probs, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([prompt_mask, completion_mask], 1), completion_ids.size(1),
        )
    noise = 0.5 * torch.randn(log_probs.shape, generator=generator)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -1.5]),
        "old_per_token_logps": (log_probs + noise).clamp(max=0.0),
        "ref_per_token_logps": (log_probs - 0.3 * noise).clamp(max=0.0),
        "num_items_in_batch": completion_mask.sum(),
    }


def loss_and_gradients(trainer, inputs):
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type, beta", [("grpo", 0.0), ("dapo", 0.0), ("bnpo", 0.04)])
def test_fixed_clip_matches_trl(tmp_path, loss_type, beta):
    model_dir = str(save_tiny_model(tmp_path / "tiny"))  # a path, so that TRL builds the reference model for beta
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shared = dict(TINY_TRAINING_ARGS, output_dir=str(tmp_path), loss_type=loss_type, beta=beta, num_iterations=2)
    ours = make_trainer(
        BandPOTrainer, BandPOConfig(bandpo_clip_method="clip-higher", epsilon=0.2, epsilon_high=0.28, **shared), model_dir, tokenizer
    )
    theirs = make_trainer(GRPOTrainer, GRPOConfig(epsilon=0.2, epsilon_high=0.28, **shared), model_dir, tokenizer)
    inputs = fixed_batch(theirs)
    our_loss, our_grads = loss_and_gradients(ours, inputs)
    their_loss, their_grads = loss_and_gradients(theirs, inputs)
    torch.testing.assert_close(our_loss, their_loss, rtol=1e-6, atol=1e-7)
    assert our_grads.keys() == their_grads.keys() and our_grads
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], rtol=1e-5, atol=1e-7)
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert ours._metrics["train"][name] == pytest.approx(theirs._metrics["train"][name], abs=1e-6)
    assert theirs._metrics["train"]["clip_ratio/region_mean"][0] > 0.1  # the batch really is clipped
    assert ours.epsilon_low == 0.2 and ours.epsilon_high == 0.28  # scalars restored after the step


@pytest.mark.parametrize("loss_type, agg_mode", [("grpo", "seq-mean-token-mean"), ("bnpo", "token-mean")])
def test_band_loss_matches_core_policy_loss(tmp_path, loss_type, agg_mode):
    tokenizer = build_tiny_tokenizer()
    trainer = make_trainer(
        BandPOTrainer,
        BandPOConfig(output_dir=str(tmp_path), loss_type=loss_type, num_iterations=2, bandpo_delta=0.002, **TINY_TRAINING_ARGS),
        tokenizer=tokenizer,
    )
    inputs = fixed_batch(trainer)
    loss, grads = loss_and_gradients(trainer, inputs)

    trainer.model.zero_grad()
    log_probs, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
        torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), inputs["completion_ids"].size(1),
    )
    mask = inputs["completion_mask"].float()
    expected, metrics = policy_loss(
        log_probs, inputs["old_per_token_logps"], inputs["advantages"], mask,
        clip=Band("kl", 0.002, 10.0), loss_agg_mode=agg_mode,
    )
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    for name, parameter in trainer.model.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(grads[name], parameter.grad, rtol=1e-4, atol=1e-6)
    logged = trainer._metrics["train"]
    for name in ("clip_ratio/region_mean", "clip_ratio/low_p_high_share", "bounds/upper_mean"):
        assert logged[name][0] == pytest.approx(metrics[name].item(), abs=1e-5)
    assert metrics["clip_ratio/region_mean"].item() > 0  # Band binds on this batch


def record_epsilons_trl_sees(monkeypatch):
    """Patches GRPOTrainer._compute_loss to keep copies of epsilon_low / epsilon_high as TRL reads them."""
    seen = []
    trl_compute_loss = GRPOTrainer._compute_loss

    def recording(self, model, inputs):
        seen.append(tuple(e.clone() if torch.is_tensor(e) else e for e in (self.epsilon_low, self.epsilon_high)))
        return trl_compute_loss(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", recording)
    return seen


def test_band_relax_epsilons_trl_sees_are_the_relaxed_band(tmp_path, monkeypatch):
    trainer = make_trainer(
        BandPOTrainer,
        BandPOConfig(
            output_dir=str(tmp_path), bandpo_clip_method="band-relax", bandpo_delta=0.001, bandpo_upper_max=1.35,
            num_iterations=2, **TINY_TRAINING_ARGS,
        ),
    )
    inputs = fixed_batch(trainer)
    seen = record_epsilons_trl_sees(monkeypatch)
    loss_and_gradients(trainer, inputs)
    (epsilon_low, epsilon_high), = seen
    valid = inputs["completion_mask"] > 0
    band_lower, band_upper = Band("kl", 0.001, 1.35).bounds(inputs["old_per_token_logps"][valid])
    expected_lower = band_lower.clamp(max=0.8)
    expected_upper = band_upper.clamp(min=1.28).clamp(max=1.35)
    torch.testing.assert_close(1 - epsilon_low[valid], expected_lower, rtol=0, atol=1e-6)
    torch.testing.assert_close(1 + epsilon_high[valid], expected_upper, rtol=0, atol=1e-6)
    # Each side has tokens where the band decides and tokens where the relax margin does.
    assert (band_lower < 0.8).any() and (band_lower > 0.8).any()
    assert ((band_upper > 1.28) & (band_upper < 1.35)).any() and (band_upper < 1.28).any()
    assert (upper_capped := band_upper >= 1.35).any() and torch.all(expected_upper[upper_capped] == 1.35)
    assert trainer._metrics["train"]["clip_ratio/region_mean"][0] > 0


# --- the per-call guard: a TRL that does not apply the bounds stops training ---------------------


def test_trl_clip_counts_follow_trls_expressions():
    """Hand-counted: ratio, advantage, padding and the dual clip min(r, delta) as TRL counts them."""
    ratio = torch.tensor([[0.5, 0.9, 1.5, 3.0], [0.7, 1.3, 2.0, 0.1]])
    advantages = torch.tensor([[-1.0], [1.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    epsilons = bandpo_trl.Epsilons(low=torch.full((2, 4), 0.2), high=torch.full((2, 4), 0.28))
    counts = bandpo_trl.trl_clip_counts("grpo", ratio, advantages, epsilons, None, mask)
    # row 0 (A < 0): 0.5 below 0.8; row 1 (A > 0): 1.3 and 2.0 above 1.28; 0.1 is padding
    assert {name: count.item() for name, count in counts.items()} == {
        "clip_ratio/low_mean": 1.0, "clip_ratio/high_mean": 2.0, "clip_ratio/region_mean": 3.0,
    }
    dual_clipped = bandpo_trl.trl_clip_counts("grpo", ratio, advantages, epsilons._replace(high=1.5), 2.0, mask)
    assert dual_clipped["clip_ratio/high_mean"].item() == 0.0  # min(r, 2) never exceeds 1 + 1.5
    assert bandpo_trl.trl_clip_counts("cispo", ratio, advantages, epsilons._replace(high=1.0), None, mask) == {
        "cispo_clip_ratio": torch.tensor(2.0)  # r > 1 with A > 0 on valid tokens: 1.3 and 2.0
    }


@pytest.mark.parametrize(
    "logged, expected, tokens, agree",
    [
        (0.5, 50.0, 100.0, True),
        (0.504, 50.0, 100.0, True),  # 0.4 of a token: float rounding, not a token
        (0.51, 50.0, 100.0, False),  # one token counted differently
        (0.49, 50.0, 100.0, False),
        (float("nan"), 50.0, 100.0, False),
        (0.0, 0.0, 0.0, True),  # no valid token
        (0.25 + 2.0**-21, 2.0**22, 2.0**24, True),  # 8 tokens of float32 slack at 2^24 tokens: 1/2 + 2^-20 N
        (0.25 + 2.0**-19, 2.0**22, 2.0**24, False),  # 32 tokens
    ],
)
def test_clip_counts_agree_within_half_a_token_plus_float32_rounding(logged, expected, tokens, agree):
    assert bandpo_trl.clip_counts_agree(logged, expected, tokens) is agree


def guard_trainer(tmp_path, **fields):
    args = dict(TINY_TRAINING_ARGS, output_dir=str(tmp_path), num_iterations=2, bandpo_delta=1e-4)
    return make_trainer(BandPOTrainer, BandPOConfig(**{**args, **fields}))


def trl_with_scalar_epsilons(monkeypatch):
    """A TRL whose loss ignores the per-token epsilons: it resets them to the config's scalars first."""
    trl_compute_loss = GRPOTrainer._compute_loss

    def ignoring_bandpo(self, model, inputs):
        self.epsilon_low = self.args.epsilon
        self.epsilon_high = self.args.epsilon_high if self.args.epsilon_high is not None else self.args.epsilon
        return trl_compute_loss(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", ignoring_bandpo)


def assert_names_versions(error, verdict="did not apply"):
    message = str(error.value)
    assert f"TRL {bandpo_trl.trl.__version__}" in message and SUPPORTED_TRL in message
    assert f"{verdict} the per-token ratio bounds of bandpo_clip_method='band'" in message


def test_trl_ignoring_the_per_token_epsilons_stops_training(tmp_path, monkeypatch):
    # num_iterations 2: the second update of each generation is off-policy, where the band binds.
    trainer = guard_trainer(tmp_path, learning_rate=1e-1, max_steps=6)
    trl_with_scalar_epsilons(monkeypatch)
    with pytest.raises(TRLCompatibilityError) as error:
        trainer.train()
    assert_names_versions(error)
    assert "its clamp used other bounds" in str(error.value)
    # On-policy updates (ratio 1: nothing clips under either interval) pass; the first off-policy update
    # after a generation with a gradient (the first has no reward variance here) raises.
    assert 1 <= trainer.state.global_step < 6


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "cispo"])
def test_trl_ignoring_the_per_token_epsilons_is_caught_on_one_batch(tmp_path, monkeypatch, loss_type):
    trainer = guard_trainer(tmp_path, loss_type=loss_type)
    inputs = fixed_batch(trainer)
    trl_with_scalar_epsilons(monkeypatch)
    with pytest.raises(TRLCompatibilityError) as error:
        loss_and_gradients(trainer, inputs)
    assert_names_versions(error)
    metric = "cispo_clip_ratio" if loss_type == "cispo" else r"clip_ratio/(low|high|region)_mean"
    assert re.search(f"TRL logged {metric} = ", str(error.value))
    assert trainer.epsilon_low == 0.2 and trainer.epsilon_high == 0.2  # scalars restored even so


def test_a_log_prob_path_other_than_trls_method_is_caught(tmp_path, monkeypatch):
    """A TRL computing the loss's log-probs elsewhere (a fused loss, say): the capture never fires."""
    trainer = guard_trainer(tmp_path)
    inputs = fixed_batch(trainer)
    trl_compute_loss = GRPOTrainer._compute_loss

    def fused_elsewhere(self, model, inputs):
        self._get_per_token_logps_and_entropies = functools.partial(GRPOTrainer._get_per_token_logps_and_entropies, self)
        try:
            return trl_compute_loss(self, model, inputs)
        finally:
            del self._get_per_token_logps_and_entropies

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", fused_elsewhere)
    with pytest.raises(TRLCompatibilityError, match=r"log-probabilities 0 time\(s\)") as error:
        loss_and_gradients(trainer, inputs)
    assert_names_versions(error)

    def twice(self, model, inputs):
        self._get_per_token_logps_and_entropies(
            model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), inputs["completion_ids"].size(1),
        )
        return trl_compute_loss(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", twice)
    with pytest.raises(TRLCompatibilityError, match=r"log-probabilities 2 time\(s\)"):
        loss_and_gradients(trainer, inputs)


def test_trl_not_logging_its_clip_counts_is_caught(tmp_path, monkeypatch):
    trainer = guard_trainer(tmp_path)
    inputs = fixed_batch(trainer)
    trl_compute_loss = GRPOTrainer._compute_loss

    def silent(self, model, inputs):
        loss = trl_compute_loss(self, model, inputs)
        self._metrics["train"]["clip_ratio/high_mean"].pop()
        return loss

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", silent)
    with pytest.raises(TRLCompatibilityError, match=r"logged 0 value\(s\) of clip_ratio/high_mean") as error:
        loss_and_gradients(trainer, inputs)
    assert_names_versions(error, verdict="gave no way to check that it applied")


@pytest.mark.parametrize("clip_method", ["band", "band-relax", "dcpo", "clip"])
def test_guard_passes_whatever_trl_options_surround_the_clip(tmp_path, clip_method):
    """No false alarm: dual clip below the ratios (TRL counts min(r, delta)), entropy mask, off-policy
    mask, the eval path, bounds capped at delta."""
    trainer = guard_trainer(
        tmp_path, bandpo_clip_method=clip_method, delta=1.3, bandpo_upper_max=1.3, top_entropy_quantile=0.5,
        off_policy_mask_threshold=0.1,
    )
    inputs = fixed_batch(trainer)
    loss_and_gradients(trainer, inputs)
    log_probs, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
        torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), inputs["completion_ids"].size(1),
    )
    ratio = torch.exp(log_probs.detach() - inputs["old_per_token_logps"])
    positive = inputs["advantages"].unsqueeze(1).expand_as(ratio) > 0
    assert (ratio[positive & (inputs["completion_mask"] > 0)] > 1.3).any()  # the dual clip's min(r, delta) matters
    assert trainer._metrics["train"]["clip_ratio/region_mean"][-1] > 0
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, inputs)
    assert len(trainer._metrics["eval"]["clip_ratio/region_mean"]) == 1


# --- no silent bypass: a loss computed without the bounds stops training ----------------------------


def assert_bypass_named(error, entry, cause):
    assert_names_versions(error)
    message = str(error.value)
    assert f"GRPOTrainer.{entry} computed a loss without calling GRPOTrainer._compute_loss" in message
    assert cause in message


def test_a_compute_loss_that_skips_the_bounded_loss_is_caught(tmp_path, monkeypatch):
    """A TRL whose compute_loss takes another path (a fused loss, say): TRL's loss with its scalar epsilons."""
    trainer = guard_trainer(tmp_path, max_steps=2)
    inputs = fixed_batch(trainer)

    def fused_elsewhere(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return GRPOTrainer._compute_loss(self, model, inputs)  # TRL's own loss, not BandPOTrainer's

    monkeypatch.setattr(GRPOTrainer, "compute_loss", fused_elsewhere)
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
    with pytest.raises(TRLCompatibilityError) as error:
        trainer.compute_loss(trainer.model, inputs)
    assert_bypass_named(error, "compute_loss", "a loss path that bandpo does not know")
    with pytest.raises(TRLCompatibilityError) as error:
        trainer.train()  # the first step is on-policy: the bypass is caught whatever the ratio
    assert_bypass_named(error, "compute_loss", "a loss path that bandpo does not know")
    assert trainer.state.global_step == 0  # before any optimizer step


def test_a_training_step_that_skips_compute_loss_is_caught(tmp_path, monkeypatch):
    trainer = guard_trainer(tmp_path, max_steps=2)

    def fused_step(self, model, inputs, num_items_in_batch=None):
        inputs = self._prepare_inputs(inputs)
        loss = GRPOTrainer._compute_loss(self, model, inputs)
        self.accelerator.backward(loss)
        return loss.detach()

    monkeypatch.setattr(GRPOTrainer, "training_step", fused_step)
    with pytest.raises(TRLCompatibilityError) as error:
        trainer.train()
    assert_bypass_named(error, "training_step", "a loss path that bandpo does not know")
    assert trainer.state.global_step == 0


class ScalarClipGRPOLoss(torch.nn.Module):
    """Stands in for liger_kernel's LigerFusedLinearGRPOLoss, which TRL 1.12 imports from liger_kernel
    (Triton): the clipped surrogate through the LM head with TRL's scalar epsilons, token-mean. Takes
    the arguments TRL 1.12 passes; those it does not use are accepted and ignored."""

    def __init__(
        self, *, beta, epsilon_low, epsilon_high, temperature, use_ref_model, loss_type, max_completion_length,
        importance_sampling_level, delta, use_bias_correction_kl, sapo_temperature_pos, sapo_temperature_neg,
        vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg,
    ):
        super().__init__()
        self.epsilon_low, self.epsilon_high, self.temperature = epsilon_low, epsilon_high, temperature

    def forward(
        self, *, _input, lin_weight, selected_token_ids, attention_mask, advantages, bias, old_per_token_logps,
        ref_per_token_logps, vllm_is_ratio, num_items_in_batch,
    ):
        logits = torch.nn.functional.linear(_input, lin_weight, bias) / self.temperature
        log_probs = logits.log_softmax(-1).gather(-1, selected_token_ids.unsqueeze(-1)).squeeze(-1)
        old_log_probs = log_probs.detach() if old_per_token_logps is None else old_per_token_logps
        ratio = torch.exp(log_probs - old_log_probs)
        clipped = ratio.clamp(1 - self.epsilon_low, 1 + self.epsilon_high)
        advantages = advantages.unsqueeze(1)
        mask = attention_mask.float()
        tokens = mask.sum().clamp(min=1.0)
        loss = (-torch.min(ratio * advantages, clipped * advantages) * mask).sum() / tokens
        return loss, [((ratio != clipped).float() * mask).sum() / tokens]


def stub_liger_kernels(monkeypatch):
    """Liger's kernels need Triton (a GPU), so on CPU: TRL and transformers are told Liger is installed and
    transformers' patching of the model with Liger kernels does nothing. TRL 1.13 computes its Liger GRPO
    loss with its own copy (pure torch); TRL 1.12 imports it from liger_kernel: `ScalarClipGRPOLoss`."""
    import transformers.trainer

    monkeypatch.setattr(transformers.trainer, "apply_liger_kernel", lambda model, kernel_config: None)
    grpo_module = sys.modules[GRPOTrainer.__module__]
    monkeypatch.setattr(grpo_module, "is_liger_kernel_available", lambda: True, raising=False)
    if hasattr(GRPOTrainer, "compute_liger_loss") and not hasattr(grpo_module, "FusedLinearGRPOLoss"):
        monkeypatch.setattr(grpo_module, "LigerFusedLinearGRPOLoss", ScalarClipGRPOLoss, raising=False)


def test_liger_either_goes_through_the_bounds_or_stops_training(tmp_path, monkeypatch):
    """use_liger_kernel=True. TRL < 1.14 computes the loss in compute_liger_loss with its scalar epsilons:
    the first step raises, naming the version and the cause. Later TRL computes it in _compute_loss
    (1.14 and 1.15 through a chunked log-prob path): training runs under the audited bounds."""
    stub_liger_kernels(monkeypatch)
    trainer = guard_trainer(tmp_path, use_liger_kernel=True, max_steps=2, learning_rate=1e-1)
    liger_loss_path = hasattr(GRPOTrainer, "compute_liger_loss")
    assert liger_loss_path == (Version(bandpo_trl.trl.__version__).release < (1, 14))
    if liger_loss_path:
        with pytest.raises(TRLCompatibilityError) as error:
            trainer.train()
        assert_bypass_named(error, "compute_loss", "with use_liger_kernel=True this TRL computes the loss in compute_liger_loss")
        assert "set use_liger_kernel=False, or use TRL >= 1.14" in str(error.value)
        assert trainer.state.global_step == 0
    else:
        trainer.train()
        logs = [record for record in trainer.state.log_history if "bounds/upper_mean" in record]
        assert len(logs) == 2 and trainer.state.global_step == 2


# --- the supported TRL versions ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.12.0", "1.13.0", "1.14.2", "1.15.0", "1.16.0", "1.16.3", "1.16.1.dev0", "1.16.0+local"])
def test_supported_trl_versions_pass(version):
    check_trl_version(version, allow_untested=False)


@pytest.mark.parametrize("version", ["1.17.0", "1.17.0.dev0", "1.11.2", "2.0.0", "1.12.0rc1", "not-a-version"])
def test_unsupported_trl_versions_are_refused_or_warned(version, monkeypatch):
    monkeypatch.delenv("BANDPO_ALLOW_UNTESTED_TRL", raising=False)
    with pytest.raises(ImportError) as error:
        check_trl_version(version)
    assert f"supports TRL {SUPPORTED_TRL}, but TRL {version} is installed" in str(error.value)
    assert "BANDPO_ALLOW_UNTESTED_TRL=1" in str(error.value)
    monkeypatch.setenv("BANDPO_ALLOW_UNTESTED_TRL", "1")
    with pytest.warns(RuntimeWarning, match=f"TRL {re.escape(version)} is installed.*still checks"):
        check_trl_version(version)


def test_the_escape_hatch_is_no_typo_to_the_openrlhf_hook():
    """One job environment may serve TRL and OpenRLHF: the hook, which refuses unknown BANDPO_* names, knows it."""
    from bandpo.integrations import openrlhf  # imports torch and bandpo only (OpenRLHF itself in the hook)

    assert bandpo_trl.ALLOW_UNTESTED_TRL in openrlhf.OTHER_BANDPO_VARIABLES


def test_importing_the_integration_checks_the_installed_trl():
    script = (
        "import warnings, trl\n"
        "trl.__version__ = '1.17.0'\n"
        "try:\n"
        "    import bandpo.integrations.trl\n"
        "except ImportError as error:\n"
        "    print('REFUSED:', error)\n"
        "import os\n"
        "os.environ['BANDPO_ALLOW_UNTESTED_TRL'] = '1'\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import bandpo.integrations.trl as integration\n"
        "print('IMPORTED:', integration.BandPOTrainer.__name__, [str(w.message) for w in caught if w.category is RuntimeWarning])\n"
    )
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    environment.pop("BANDPO_ALLOW_UNTESTED_TRL", None)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"REFUSED: bandpo.integrations.trl supports TRL {SUPPORTED_TRL}, but TRL 1.17.0 is installed" in completed.stdout
    assert "IMPORTED: BandPOTrainer" in completed.stdout and "still checks" in completed.stdout


# --- training ------------------------------------------------------------------------------------


def test_band_bounds_bind_when_training_off_policy(tmp_path):
    args = BandPOConfig(
        output_dir=str(tmp_path), num_iterations=2, learning_rate=1e-1, bandpo_delta=0.001, max_steps=4, **TINY_TRAINING_ARGS
    )
    trainer = make_trainer(BandPOTrainer, args)
    trainer.train()
    logs = [record for record in trainer.state.log_history if "clip_ratio/region_mean" in record]
    assert len(logs) == 4
    assert max(record["clip_ratio/region_mean"] for record in logs) > 0  # gradients were cut by the band
    assert max(record["clip_ratio/out_of_band"] for record in logs) > 0
    for record in logs:
        assert 0 < record["bounds/lower_mean"] < 1 < record["bounds/upper_mean"]
        assert sum(record[f"tokens/p_old_{b}"] for b in ("0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0")) > 0
    # the first update of each generation is on-policy (ratio 1): nothing clipped there
    assert logs[0]["clip_ratio/region_mean"] == 0


def free_port() -> int:
    """A TCP port nothing listens on now (not torch.distributed's default 29500, which a concurrent run may hold)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_accelerate_run(tmp_path):
    import_if_installed("accelerate")
    command = [
        # accelerate 1.15 runs `--cpu` through its single-process launcher; `--multi_gpu` on a machine
        # without GPUs starts 2 torchrun processes that train on CPU over gloo.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(TESTS / "trl_two_process_script.py"), str(tmp_path),
    ]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["num_processes"] == 2
    logs = [record for record in result["log_history"] if "clip_ratio/region_mean" in record]
    assert len(logs) == 3
    assert all("clip_ratio/low_p_high_share" in record and "bounds/upper_mean" in record for record in logs)
    # token counts are summed over both processes: one process holds at most 4 completions x 6 tokens
    buckets = ("0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0")
    assert max(sum(record[f"tokens/p_old_{b}"] for b in buckets) for record in logs) > 24


# --- DPPO (docs/integrations/trl.md, "DPPO in TRL") ----------------------------------------------


def binary_divergence(divergence, p_old, p):
    """DPPO's divergence between Bern(p_old) and Bern(p), p the sampled token's probability."""
    if divergence == "tv":
        return (p - p_old).abs()
    return p_old * torch.log(p_old / p) + (1 - p_old) * torch.log((1 - p_old) / (1 - p))


def dppo_keeps_gradient(divergence, radius, old_log_probs, log_probs, advantages):
    """DPPO's mask: a token keeps its gradient unless it left the radius in the direction its advantage
    pushes (A > 0 and p rose, or A < 0 and p fell)."""
    p_old, p = old_log_probs.double().exp(), log_probs.double().exp()
    outside = binary_divergence(divergence, p_old, p) > radius
    pushed_out = ((advantages > 0) & (p > p_old)) | ((advantages < 0) & (p < p_old))
    return ~(outside & pushed_out)


@pytest.mark.parametrize("divergence, radius", [("kl", 0.003), ("tv", 0.01)])
def test_band_gradient_is_dppos_token_by_token(tmp_path, monkeypatch, divergence, radius):
    """With DPPO's settings (no cap, no dual clip), BandPOTrainer's per-token gradient mask is DPPO's rule,
    and each kept token's gradient is DPPO's -A min(r, C) / N (r < C = 20 on this batch)."""
    config = BandPOConfig(
        output_dir=str(tmp_path), loss_type="bnpo", num_iterations=2, bandpo_divergence=divergence, bandpo_delta=radius,
        bandpo_upper_max=None, delta=None, **TINY_TRAINING_ARGS,
    )
    trainer = make_trainer(BandPOTrainer, config)
    inputs = fixed_batch(trainer)
    policy_log_probs = []
    trl_log_probs = GRPOTrainer._get_per_token_logps_and_entropies

    def keeping_their_gradient(self, *args, **kwargs):
        log_probs, *rest = trl_log_probs(self, *args, **kwargs)
        log_probs.retain_grad()
        policy_log_probs.append(log_probs)
        return (log_probs, *rest)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", keeping_their_gradient)
    loss_and_gradients(trainer, inputs)
    (log_probs,) = policy_log_probs
    valid = inputs["completion_mask"] > 0
    old_log_probs = inputs["old_per_token_logps"]
    advantages = inputs["advantages"].unsqueeze(1).expand_as(log_probs)
    p_old, p = old_log_probs.double().exp(), log_probs.detach().double().exp()
    # no token within solver precision of the radius, so the comparison is decided by the rule alone
    assert ((binary_divergence(divergence, p_old, p) - radius).abs()[valid] > 1e-4 * radius).all()

    band_keeps = log_probs.grad != 0
    dppo_keeps = dppo_keeps_gradient(divergence, radius, old_log_probs, log_probs.detach(), advantages)
    assert torch.equal(band_keeps[valid], dppo_keeps[valid])
    for pushed in (advantages > 0, advantages < 0):  # tokens cut on both sides, and tokens kept
        assert (~dppo_keeps & pushed & valid).any() and (dppo_keeps & pushed & valid).any()
    ratio = torch.exp(log_probs.detach() - old_log_probs)
    dppo_gradient = -advantages * torch.clamp(ratio, max=20.0) / valid.sum()
    assert (ratio[valid] < 20.0).all()
    torch.testing.assert_close(log_probs.grad[valid & dppo_keeps], dppo_gradient[valid & dppo_keeps].float())
