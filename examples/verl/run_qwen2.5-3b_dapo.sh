#!/usr/bin/env bash
# BandPO and its baselines on verl 0.9 (SPEC §6): Qwen2.5-3B-Instruct, DAPO-Math-17k, one 8-GPU node.
#
#   examples/verl/run_qwen2.5-3b_dapo.sh bandpo|band-relax|grpo|clip-higher|dcpo [extra hydra overrides...]
#
# Data: parquet files in verl's RL format (prompt, data_source, reward_model.ground_truth) — DAPO-Math-17k
# (+ MATH levels 3-5) for training, AIME 2024 / AIME 2025 / AMC 2023 for validation — at
# $DATA_DIR/{dapo-math-17k,aime-2024,aime-2025,amc-2023}.parquet. Validation draws 32 samples per
# problem at temperature 1.0; verl logs their mean accuracy (mean@32) and best-of-32 (pass@32) per data source.
#
# Expected (the paper, SPEC §5; not measured by this project): BandPO >= +2.0 mean@32 over GRPO on
# AIME 2024 / AIME 2025 / AMC 2023 and about +10 points on AMC 2023 for Qwen2.5-3B-Instruct; policy entropy
# stays near 0.2 with BandPO and collapses to about 0.02 with GRPO (actor/entropy).
set -euo pipefail

method="${1:?usage: $0 bandpo|band-relax|grpo|clip-higher|dcpo [overrides...]}"
shift
DATA_DIR="${DATA_DIR:-$HOME/data}"
MODEL="${MODEL:-Qwen/Qwen2.5-3B-Instruct}"

# Every method is verl's loss_mode=bandpo; bandpo_clip_method picks the bound rule, and the fixed margins
# (clip, clip-higher, band-relax, dcpo) are verl's clip_ratio_low / clip_ratio_high. The baselines are
# verl's own PPO loss, number for number, plus BandPO's clip diagnostics
# (actor/bandpo/clip_ratio/low_p_high_share is the paper's Figure 3b).
case "$method" in
    bandpo)      clip_method=band;        margins=(0.2 0.2) ;;   # margins unused by band
    band-relax)  clip_method=band-relax;  margins=(0.2 0.28) ;;  # the published relax ablation (SPEC §9)
    grpo)        clip_method=clip;        margins=(0.2 0.2) ;;
    clip-higher) clip_method=clip-higher; margins=(0.2 0.28) ;;
    dcpo)        clip_method=dcpo;        margins=(0.16 0.20) ;; # SPEC §4
    *) echo "method must be one of bandpo, band-relax, grpo, clip-higher, dcpo; got '$method'" >&2; exit 2 ;;
esac
# kl, delta 0.05 and upper bound cap 10 are the defaults; the + lines restate them to show where they change.
loss=(
    actor_rollout_ref.model.external_lib=bandpo.integrations.verl
    actor_rollout_ref.actor.policy_loss.loss_mode=bandpo
    actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPOPolicyLossConfig
    +actor_rollout_ref.actor.policy_loss.bandpo_clip_method="$clip_method"
    +actor_rollout_ref.actor.policy_loss.bandpo_divergence=kl
    +actor_rollout_ref.actor.policy_loss.bandpo_delta=0.05
    +actor_rollout_ref.actor.policy_loss.bandpo_upper_max=10.0
    actor_rollout_ref.actor.clip_ratio_low="${margins[0]}"
    actor_rollout_ref.actor.clip_ratio_high="${margins[1]}"
)

python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=false \
    data.train_files="$DATA_DIR/dapo-math-17k.parquet" \
    data.val_files="[$DATA_DIR/aime-2024.parquet,$DATA_DIR/aime-2025.parquet,$DATA_DIR/amc-2023.parquet]" \
    data.train_batch_size=256 \
    data.max_prompt_length=1024 \
    data.max_response_length=4096 \
    data.filter_overlong_prompts=true \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.use_remove_padding=true \
    actor_rollout_ref.model.enable_gradient_checkpointing=true \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean \
    actor_rollout_ref.actor.clip_ratio_c=10.0 \
    actor_rollout_ref.actor.use_kl_loss=true \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.fsdp_config.param_offload=false \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=false \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=16 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.rollout.val_kwargs.n=32 \
    actor_rollout_ref.rollout.val_kwargs.temperature=1.0 \
    actor_rollout_ref.rollout.val_kwargs.do_sample=true \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 \
    trainer.n_gpus_per_node=8 \
    trainer.nnodes=1 \
    trainer.total_training_steps=1000 \
    trainer.test_freq=50 \
    trainer.save_freq=100 \
    trainer.val_before_train=true \
    trainer.logger='[console,tensorboard]' \
    trainer.project_name=bandpo \
    trainer.experiment_name="qwen2.5-3b-dapo-$method" \
    "${loss[@]}" \
    "$@"
