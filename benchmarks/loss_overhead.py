"""Cost of BandPO's per-token bounds inside the policy loss, against fixed PPO clipping.

    python benchmarks/loss_overhead.py [--batch 64] [--tokens 4096] [--repeats 30] [--device cpu|cuda]
                                       [--breakdown]

Times forward + backward of ``bandpo.policy_loss`` (seq-mean-token-mean, dual-clip 10, the
published settings) on a (batch x tokens) float32 batch with ``Band("kl")`` and with
``FixedClip()``. Both rules run in the same process on the same tensors, interleaved
repetition by repetition (alternating which goes first) after a warm-up, and the medians are
compared: the target is Band / FixedClip <= 1.15.

Inputs mimic an LLM's sampled tokens: most old probabilities near 1, a tail down to 1e-8;
new log-probabilities are the old ones moved by a small random log-ratio (std 0.05, a few
tokens far off), response lengths vary so that part of the batch is padding.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from bandpo import Band, FixedClip, policy_loss


def make_batch(batch: int, tokens: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, tokens)
    head = -torch.rand(shape, generator=g).pow(4) * 0.5  # p in ~[0.6, 1]
    tail = torch.rand(shape, generator=g) * torch.log(torch.tensor(1e-8))  # p down to 1e-8
    old = torch.where(torch.rand(shape, generator=g) < 0.25, tail, head)
    log_ratio = torch.randn(shape, generator=g) * 0.05
    far = torch.rand(shape, generator=g) < 0.02
    log_ratio = torch.where(far, torch.randn(shape, generator=g) * 1.0, log_ratio)
    new = (old + log_ratio).clamp(max=0.0)
    lengths = torch.randint(tokens // 4, tokens + 1, (batch,), generator=g)
    mask = torch.arange(tokens)[None, :] < lengths[:, None]
    advantages = torch.randn(batch, generator=g).sign()
    new = new.to(device).requires_grad_(True)
    return new, old.to(device), advantages.to(device), mask.to(device)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step(rule, new, old, advantages, mask):
    loss, metrics = policy_loss(
        new, old, advantages, mask, clip=rule, loss_agg_mode="seq-mean-token-mean", dual_clip=10.0
    )
    (grad,) = torch.autograd.grad(loss, new)
    return grad


def timed(rule, inputs, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    step(rule, *inputs)
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time Band(kl, validate=False) and Band(tv) (closed form) to split the overhead",
    )
    args = parser.parse_args()

    inputs = make_batch(args.batch, args.tokens, args.device)
    rules = {"Band(kl)": Band("kl"), "FixedClip": FixedClip()}
    if args.breakdown:
        rules["Band(kl,novalid)"] = Band("kl", validate=False)
        rules["Band(tv)"] = Band("tv", 0.05)
    for _ in range(args.warmup):
        for rule in rules.values():
            step(rule, *inputs)
    synchronize(args.device)

    times: dict[str, list[float]] = {name: [] for name in rules}
    names = list(rules)
    for repeat in range(args.repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(timed(rules[name], inputs, args.device))

    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(
        f"policy_loss forward+backward, {args.batch} x {args.tokens} = {args.batch * args.tokens} tokens, "
        f"float32, {args.device} ({device}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.repeats} interleaved repeats after {args.warmup} warm-up"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(
            f"  {name:<16} median {medians[name] * 1e3:8.2f} ms   "
            f"min {min(values) * 1e3:8.2f} ms   max {max(values) * 1e3:8.2f} ms"
        )
    for name in names[2:]:
        print(f"  ratio {name} / FixedClip (medians): {medians[name] / medians['FixedClip']:.3f}x")
    ratio = medians["Band(kl)"] / medians["FixedClip"]
    verdict = "within" if ratio <= 1.15 else "ABOVE"
    print(f"  ratio Band / FixedClip (medians): {ratio:.3f}x  ({verdict} the 1.15x target)")


if __name__ == "__main__":
    main()
