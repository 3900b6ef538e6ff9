"""Held-out evaluation: greedy accuracy, and pass@k / mean@k from k samples at temperature 1.

For problems i = 1..N with k samples each, c_i of them correct:

    accuracy  = (1/N) sum_i [greedy answer of i is correct]
    pass@k    = (1/N) sum_i [c_i > 0]
    mean@k    = (1/N) sum_i c_i / k

(the paper's pass@32 and mean@32 with k = 32; here k = n, so pass@k needs no estimator).

Generation is the slow part (the study's 128 problems x (1 greedy + 8 sampled) take minutes on CPU),
so `evaluate` shows a tqdm bar over the generated sequences, with its rate and ETA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bandpo.training.arithmetic import is_correct


@dataclass(frozen=True)
class EvalResult:
    """Greedy accuracy over ``count`` problems, a few (prompt, completion, answer) examples, and,
    when ``samples`` > 0, pass@samples and mean@samples at temperature 1."""

    accuracy: float
    count: int
    examples: list[tuple[str, str, str]]
    samples: int = 0
    pass_at_k: float | None = None
    mean_at_k: float | None = None


def _completions(model, tokenizer, problems: list[dict], max_new_tokens: int, **sampling) -> list[str]:
    """One generate call over ``problems`` (chat template, left padding); the decoded completions."""
    texts = [tokenizer.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True) for p in problems]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    return tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    problems: list[dict],
    max_new_tokens: int,
    samples: int = 0,
    seed: int = 0,
    batch_size: int = 64,
    num_examples: int = 3,
    progress: str | None = "held-out evaluation",
) -> EvalResult:
    """Greedy accuracy on ``problems``; with ``samples`` = k > 0 also pass@k and mean@k (T = 1, no
    top-k/top-p truncation, sampled under ``seed`` without disturbing the caller's RNG state).

    ``batch_size`` is the number of sequences per generate call (k samples of a problem share one).
    ``progress`` labels a progress bar (on stderr) over the N * (1 + k) generated sequences, advanced
    after each generate call; None shows none. The bar changes nothing that is computed.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    greedy_correct = 0
    examples: list[tuple[str, str, str]] = []
    sample_correct = [0] * len(problems)
    bar = tqdm(total=len(problems) * (1 + samples), desc=progress, unit="seq", disable=progress is None)
    try:
        for start in range(0, len(problems), batch_size):
            batch = problems[start : start + batch_size]
            for problem, completion in zip(batch, _completions(model, tokenizer, batch, max_new_tokens, do_sample=False), strict=True):
                greedy_correct += is_correct(completion, problem["answer"])
                if len(examples) < num_examples:
                    examples.append((problem["prompt"][-1]["content"], completion, problem["answer"]))
            bar.update(len(batch))
        if samples:
            per_call = max(1, batch_size // samples)
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                for start in range(0, len(problems), per_call):
                    batch = problems[start : start + per_call]
                    completions = _completions(
                        model, tokenizer, batch, max_new_tokens,
                        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=samples,
                    )
                    for index, completion in enumerate(completions):
                        sample_correct[start + index // samples] += is_correct(completion, batch[index // samples]["answer"])
                    bar.update(len(completions))
    finally:
        bar.close()
        tokenizer.padding_side = padding_side
        model.train(was_training)
    count = max(len(problems), 1)
    return EvalResult(
        greedy_correct / count,
        len(problems),
        examples,
        samples=samples,
        pass_at_k=sum(c > 0 for c in sample_correct) / count if samples else None,
        mean_at_k=sum(sample_correct) / (count * samples) if samples else None,
    )
