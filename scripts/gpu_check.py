"""CUDA checks of the operator and the loss (run on a machine with a GPU; prints a report).

    python scripts/gpu_check.py

1. band on CUDA (eager and fused kernels, every built-in divergence, float64/float32/bfloat16/float16)
   against the CPU float64 bounds: maximum relative error with the dtype's absolute floor.
2. CUDA-graph capture of band(validate=False, kernel="eager"): replays on new data match eager, so the
   operator has no host synchronisation and no data-dependent control flow.
3. validate=True still raises ValueError for NaN input on CUDA.
4. policy_loss forward and backward on CUDA match the CPU to float32 precision.
"""

from __future__ import annotations

import argparse

import torch

import bandpo

FLOORS = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}
TOLERANCES = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def relative_error(value: torch.Tensor, exact: torch.Tensor, floor: float, tolerance: float) -> float:
    """Max relative error against ``exact`` rounded to ``value``'s dtype (float16 overflows past 65504)."""
    exact = exact.to(value.dtype).double()
    value = value.double().cpu()
    finite = torch.isfinite(exact)
    if not torch.equal(torch.isfinite(value), finite):
        return float("inf")
    scale = exact[finite].abs().clamp_min(floor / tolerance)
    return ((value[finite] - exact[finite]).abs() / scale).max().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--divergences", nargs="+", default=list(bandpo.DIVERGENCES))
    divergences = parser.parse_args().divergences
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    generator = torch.Generator().manual_seed(0)
    log_p = torch.cat([
        torch.log(torch.logspace(-12, 0, 4000, dtype=torch.float64)),
        -torch.rand(4000, generator=generator, dtype=torch.float64) * 30,
        torch.tensor([0.0, float("-inf")], dtype=torch.float64),
    ])
    failures = 0
    for name in divergences:
        for dtype in TOLERANCES:
            x = log_p.to(dtype)
            exact = bandpo.band(x.double(), 0.05, name, kernel="eager")  # the same rounded input
            for kernel in ("eager", "fused"):
                if kernel == "fused" and name == "reverse_kl" and dtype != torch.float32:
                    continue  # the generic solver's fused kernel: one dtype is enough here
                got = bandpo.band(x.cuda(), 0.05, name, kernel=kernel)
                assert got[0].dtype == dtype and got[0].is_cuda
                errors = [relative_error(g, e, FLOORS[dtype], TOLERANCES[dtype]) for g, e in zip(got, exact, strict=True)]
                ok = max(errors) <= TOLERANCES[dtype]
                failures += not ok
                print(f"{name:<11} {str(dtype):<15} {kernel}  max rel err "
                      f"lower {errors[0]:.2e} upper {errors[1]:.2e}  {'OK' if ok else 'FAIL'}")
    # 2. CUDA graph capture
    static = (-torch.rand(1 << 16, device="cuda") * 10).contiguous()
    for name in divergences:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            bandpo.band(static, 0.05, name, validate=False, kernel="eager")  # warm-up
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = bandpo.band(static, 0.05, name, validate=False, kernel="eager")
        static.copy_(-torch.rand(1 << 16, device="cuda") * 20)
        graph.replay()
        eager = bandpo.band(static, 0.05, name, kernel="eager")
        same = all(torch.equal(c, e) for c, e in zip(captured, eager, strict=True))
        failures += not same
        print(f"cuda graph capture + replay, {name:<11}: {'identical to eager' if same else 'DIFFERENT'}")
    # 3. validation on CUDA
    try:
        bandpo.band(torch.tensor([float("nan"), -1.0], device="cuda"), 0.05)
        print("validate on CUDA: NaN NOT rejected")
        failures += 1
    except ValueError as error:
        print(f"validate on CUDA: NaN rejected ({error})")
    # 4. the loss on CUDA vs CPU
    shape = (8, 256)
    old = -torch.rand(shape, generator=generator) * 6
    new = (old + 0.3 * torch.randn(shape, generator=generator)).clamp(max=0)
    advantages = torch.randn(8, generator=generator)
    mask = torch.rand(shape, generator=generator) < 0.8
    results = []
    for device in ("cpu", "cuda"):
        log_probs = new.detach().to(device).requires_grad_()
        loss, metrics = bandpo.policy_loss(
            log_probs, old.to(device), advantages.to(device), mask.to(device),
            clip=bandpo.Band(), loss_agg_mode="seq-mean-token-mean", dual_clip=10.0,
        )
        loss.backward()
        results.append((loss.item(), log_probs.grad.cpu(), bandpo.metrics_to_floats(metrics)))
    (cpu_loss, cpu_grad, cpu_metrics), (gpu_loss, gpu_grad, gpu_metrics) = results
    same_loss = abs(cpu_loss - gpu_loss) <= 1e-5 * max(1.0, abs(cpu_loss)) and torch.allclose(cpu_grad, gpu_grad, atol=1e-6)
    same_metrics = all(abs(cpu_metrics[k] - gpu_metrics[k]) <= 1e-4 * max(1.0, abs(cpu_metrics[k])) for k in cpu_metrics)
    failures += not (same_loss and same_metrics)
    print(f"policy_loss on CUDA vs CPU: loss {gpu_loss:.6f} vs {cpu_loss:.6f}, gradients and metrics "
          f"{'match' if same_loss and same_metrics else 'DIFFER'}")
    print(f"{failures} failures")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
