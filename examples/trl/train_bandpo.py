"""BandPO on TRL with accelerate + DeepSpeed ZeRO-3 + vLLM (colocated).

    accelerate launch --config_file examples/trl/accelerate_zero3.yaml \
        examples/trl/train_bandpo.py --config examples/trl/bandpo_qwen2.5-3b.yaml

Needs the ``trl`` extra (``pip install 'bandpo[trl]' vllm deepspeed``) and GPUs. Evaluate the saved
checkpoints on AIME 2024 / AIME 2025 / AMC 2023 with 32 samples at temperature 1.0 (mean@32, pass@32).
"""

from __future__ import annotations

from datasets import load_dataset
from trl import ModelConfig, ScriptArguments, TrlParser
from trl.rewards import accuracy_reward

from bandpo.integrations.trl import BandPOConfig, BandPOTrainer

SYSTEM_PROMPT = "Solve the problem step by step. Put the final answer in \\boxed{}."


def to_conversation(example: dict) -> dict:
    """DAPO-Math-17k row -> TRL conversational prompt with the ground-truth ``solution`` column."""
    question = example["prompt"][0]["content"] if isinstance(example["prompt"], list) else example["prompt"]
    return {
        "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        "solution": example["reward_model"]["ground_truth"],
    }


def main() -> None:
    script_args, training_args, model_args = TrlParser((ScriptArguments, BandPOConfig, ModelConfig)).parse_args_and_config()
    dataset = load_dataset(script_args.dataset_name, split="train").map(to_conversation)
    trainer = BandPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=accuracy_reward,
        args=training_args,
        train_dataset=dataset,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
