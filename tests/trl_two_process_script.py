"""Run by tests/test_trl.py under `accelerate launch --cpu --num_processes 2`: a few BandPO steps."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from datasets import Dataset  # noqa: E402
from tiny_models import TINY_TRAINING_ARGS, build_tiny_model, build_tiny_tokenizer, reward_sevens  # noqa: E402

from bandpo.integrations.trl import BandPOConfig, BandPOTrainer  # noqa: E402


def main(output_dir: str) -> None:
    tokenizer = build_tiny_tokenizer()
    prompts = [[{"role": "user", "content": f"what is {i} + {i % 3} ?"}] for i in range(32)]
    args = BandPOConfig(
        output_dir=output_dir,
        num_iterations=2,
        learning_rate=5e-2,
        bandpo_delta=0.01,
        max_steps=3,
        **TINY_TRAINING_ARGS,
    )
    trainer = BandPOTrainer(
        model=build_tiny_model(tokenizer),
        processing_class=tokenizer,
        reward_funcs=reward_sevens,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    trainer.train()
    if trainer.accelerator.is_main_process:
        result = {"num_processes": trainer.accelerator.num_processes, "log_history": trainer.state.log_history}
        Path(output_dir, "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
