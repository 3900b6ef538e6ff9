"""The cost of BandPO's bounds inside a training step of the default model, against FixedClip.

    python benchmarks/train_overhead.py [--repeats 5] [--batch 16] [--completion-tokens 12]

Builds the batch shape of the default ``bandpo train`` run (SmolLM2-135M-Instruct, 16 arithmetic
prompts, 12 completion tokens each) and times one optimisation step, forward + policy loss +
backward, with ``Band("kl", 0.05)`` and with ``FixedClip(0.2, 0.28)``, interleaved, medians of
``--repeats``. It also times the bound computation alone on the step's tokens, the direct measure of
the Band share (two whole-step medians differ by noise of the order of a percent on a shared CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import bandpo
from bandpo.training.arithmetic import ArithmeticTask
from bandpo.training.models import load_model_and_tokenizer, resolve_model


def training_batch(tokenizer, batch: int, completion_tokens: int, seed: int = 0):
    """(input_ids, attention_mask, completion_mask) of chat-templated prompts plus random completions."""
    problems, _ = ArithmeticTask().split(8, seed)
    texts = [
        tokenizer.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True) for p in problems[:batch]
    ]
    prompts = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    generator = torch.Generator().manual_seed(seed)
    completions = torch.randint(100, 5000, (batch, completion_tokens), generator=generator)
    input_ids = torch.cat([prompts["input_ids"], completions], dim=1)
    attention_mask = torch.cat([prompts["attention_mask"], torch.ones_like(completions)], dim=1)
    return input_ids, attention_mask, completion_tokens


def step(model, input_ids, attention_mask, completion_tokens, old_log_probs, advantages, rule) -> float:
    """Seconds for forward, clipped loss with ``rule`` and backward."""
    start = time.perf_counter()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -completion_tokens - 1 : -1]
    targets = input_ids[:, -completion_tokens:]
    log_probs = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = torch.ones_like(log_probs)
    loss, _ = bandpo.policy_loss(log_probs, old_log_probs, advantages, mask, clip=rule, loss_agg_mode="seq-mean-token-mean")
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--completion-tokens", type=int, default=12)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(resolve_model("smollm2"))
    model.train()
    input_ids, attention_mask, completion_tokens = training_batch(tokenizer, args.batch, args.completion_tokens)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -completion_tokens - 1 : -1]
        targets = input_ids[:, -completion_tokens:]
        current = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # an earlier policy: the ratio moves by ~e^{+-0.3}, so both rules clip some tokens
    old_log_probs = (current + 0.3 * torch.randn_like(current)).clamp(max=0.0)
    advantages = torch.randn(args.batch)
    rules = {"FixedClip(0.2, 0.28)": bandpo.FixedClip(0.2, 0.28), 'Band("kl", 0.05)': bandpo.Band("kl", 0.05)}
    times = {name: [] for name in rules}
    for rule in rules.values():  # warm-up
        step(model, input_ids, attention_mask, completion_tokens, old_log_probs, advantages, rule)
    for _ in range(args.repeats):
        for name, rule in rules.items():
            times[name].append(step(model, input_ids, attention_mask, completion_tokens, old_log_probs, advantages, rule))
    bound_times = []
    for _ in range(50):
        start = time.perf_counter()
        rules['Band("kl", 0.05)'].bounds(old_log_probs)
        bound_times.append(time.perf_counter() - start)
    clip_step, band_step = (statistics.median(times[name]) for name in rules)
    bounds_alone = statistics.median(bound_times)
    print(f"# SmolLM2-135M-Instruct, batch {args.batch} x {input_ids.shape[1]} tokens "
          f"({completion_tokens} completion tokens), {torch.get_num_threads()} threads, {args.repeats} repeats")
    for name in rules:
        print(f"{name:<22} step median {statistics.median(times[name]):8.3f} s   (all: {', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"step ratio Band / FixedClip            {band_step / clip_step:8.4f}")
    print(f"Band bounds alone on the step's tokens {bounds_alone * 1e3:8.3f} ms = {100 * bounds_alone / clip_step:.4f}% of a step")


if __name__ == "__main__":
    main()
