"""BandPOConfig / BandPOTrainer on a tiny Llama (no network)."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
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
from bandpo.integrations.trl import BandPOConfig, BandPOTrainer, never_off_policy  # noqa: E402

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
        ({"clip_method": "bandpo"}, "clip_method must be one of band, clip, clip-higher, dcpo"),
        ({"divergence": "js"}, "divergence must be one of"),
        ({"bandpo_delta": 0.0}, "bandpo_delta must be a number in [1e-06, 1000]"),
        ({"bandpo_delta": -1.0}, "bandpo_delta must be a number in [1e-06, 1000]"),
        ({"bandpo_delta": float("inf")}, "bandpo_delta must be a number in [1e-06, 1000], got inf"),
        ({"upper_max": 0.5}, "upper_max must be None or a number >= 1"),
        ({"clip_method": "dcpo", "dcpo_eps_low": -0.1}, "eps_low must be a finite number >= 0"),
        ({"loss_type": "sapo"}, "loss_type 'sapo' does not clip the ratio"),
        ({"loss_type": "cispo", "clip_method": "clip"}, "use trl.GRPOTrainer"),
        ({"importance_sampling_level": "sequence"}, "needs importance_sampling_level='token'"),
    ],
)
def test_bad_config_names_the_field(tmp_path, fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        BandPOConfig(output_dir=str(tmp_path), **TINY_TRAINING_ARGS, **fields)


def test_config_rules_and_defaults(tmp_path):
    band = BandPOConfig(output_dir=str(tmp_path), **TINY_TRAINING_ARGS).bound_rule()
    assert isinstance(band, Band) and band.delta == 0.05 and band.divergence == "kl" and band.upper_max == 10.0
    higher = BandPOConfig(output_dir=str(tmp_path), clip_method="clip-higher", **TINY_TRAINING_ARGS)
    assert higher.epsilon_high == 0.28
    lower, upper = higher.bound_rule().bounds(torch.tensor([-1.0]))
    assert lower.item() == pytest.approx(0.8) and upper.item() == pytest.approx(1.28)
    assert isinstance(BandPOConfig(output_dir=str(tmp_path), **TINY_TRAINING_ARGS), GRPOConfig)


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
        BandPOTrainer, BandPOConfig(clip_method="clip-higher", epsilon=0.2, epsilon_high=0.28, **shared), model_dir, tokenizer
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


def test_two_process_accelerate_run(tmp_path):
    pytest.importorskip("accelerate")
    command = [
        # accelerate 1.15 runs `--cpu` through its single-process launcher; `--multi_gpu` on a machine
        # without GPUs starts 2 torchrun processes that train on CPU over gloo.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
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
