"""Greedy accuracy on held-out problems."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bandpo.training.arithmetic import is_correct


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over ``count`` problems and a few (prompt, completion, answer) examples."""

    accuracy: float
    count: int
    examples: list[tuple[str, str, str]]


@torch.no_grad()
def evaluate_accuracy(
    model, tokenizer, problems: list[dict], max_new_tokens: int, batch_size: int = 32, num_examples: int = 3
) -> EvalResult:
    """Share of ``problems`` answered correctly with greedy decoding of at most ``max_new_tokens``."""
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    correct, examples = 0, []
    try:
        for start in range(0, len(problems), batch_size):
            batch = problems[start : start + batch_size]
            texts = [
                tokenizer.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True) for p in batch
            ]
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            output = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            completions = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
            for problem, completion in zip(batch, completions):
                correct += is_correct(completion, problem["answer"])
                if len(examples) < num_examples:
                    examples.append((problem["prompt"][-1]["content"], completion, problem["answer"]))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return EvalResult(correct / max(len(problems), 1), len(problems), examples)
