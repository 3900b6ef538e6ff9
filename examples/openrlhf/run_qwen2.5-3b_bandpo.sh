#!/usr/bin/env bash
# BandPO on OpenRLHF 0.11 (SPEC §6): Qwen2.5-3B-Instruct, DAPO-Math-17k, one 8-GPU node, Ray job.
#
#   examples/openrlhf/run_qwen2.5-3b_bandpo.sh [band|band-relax|clip|clip-higher|dcpo] [extra OpenRLHF args...]
#
# OpenRLHF builds its PolicyLoss inside Ray workers; Ray's worker_process_setup_hook swaps in
# bandpo.integrations.openrlhf.BandPOPolicyLoss there, configured by the BANDPO_* env vars
# (BANDPO_X sets BandPOPolicyLoss's keyword bandpo_x). The fixed margins (clip, clip-higher, band-relax,
# dcpo) are OpenRLHF's --actor.eps_clip_low_high.
# OpenRLHF's vLLM/train mismatch correction composes with every rule, e.g. append
#   --algo.advantage.is_correction_level token --algo.advantage.is_correction_mode mask   (ICEPOP)
#   --algo.advantage.is_correction_level token --algo.advantage.is_correction_mode clip   (TIS)
# REWARD_FUNC: a Python file with OpenRLHF's reward_func(queries, prompts, labels) (math answer check).
# Expected (the paper, SPEC §5; not measured here): >= +2.0 mean@32 over GRPO, about +10 points on AMC 2023.
set -euo pipefail

method="${1:-band}"
shift || true
case "$method" in
    band|clip) eps=(0.2 0.2) ;;          # unused by band
    band-relax|clip-higher) eps=(0.2 0.28) ;;
    dcpo) eps=(0.16 0.20) ;;             # SPEC §4
    *) echo "method must be one of band, band-relax, clip, clip-higher, dcpo; got '$method'" >&2; exit 2 ;;
esac
DATA_DIR="${DATA_DIR:-$HOME/data}"
: "${REWARD_FUNC:?set REWARD_FUNC to a reward_func python file}"

runtime_env=$(cat <<JSON
{"worker_process_setup_hook": "bandpo.integrations.openrlhf.use_bandpo_policy_loss",
 "env_vars": {"BANDPO_CLIP_METHOD": "$method", "BANDPO_DIVERGENCE": "kl",
              "BANDPO_DELTA": "0.05", "BANDPO_UPPER_MAX": "10.0"}}
JSON
)

ray job submit --address="${RAY_ADDRESS:-http://127.0.0.1:8265}" --runtime-env-json="$runtime_env" \
    -- python3 -m openrlhf.cli.train_ppo_ray \
    --actor.model_name_or_path Qwen/Qwen2.5-3B-Instruct \
    --actor.num_nodes 1 --actor.num_gpus_per_node 8 \
    --vllm.num_engines 8 --vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.5 \
    --train.colocate_all --vllm.enable_sleep --ds.enable_sleep \
    --ds.zero_stage 3 --actor.gradient_checkpointing_enable --ds.packing_samples \
    --data.prompt_dataset "$DATA_DIR/dapo-math-17k.jsonl" --data.input_key prompt --data.label_key answer \
    --data.apply_chat_template \
    --eval.dataset "$DATA_DIR/aime-amc-eval.jsonl" --eval.n_samples_per_prompt 32 --eval.temperature 1.0 \
    --eval.steps 50 \
    --reward.remote_url "$REWARD_FUNC" \
    --algo.advantage.estimator group_norm \
    --rollout.batch_size 256 --rollout.n_samples_per_prompt 16 --train.batch_size 1024 \
    --rollout.max_new_tokens 4096 --data.max_len 5120 --rollout.temperature 1.0 \
    --actor.eps_clip_low_high "${eps[@]}" --actor.dual_clip 10 \
    --actor.loss_agg_mode seq-mean-token-mean \
    --algo.kl.use_loss --algo.kl.init_coef 0.001 --algo.kl.estimator k3 --actor.entropy_coef 0 \
    --ckpt.output_dir runs/openrlhf-qwen2.5-3b-"$method" \
    "$@"
