"""Benchmark the update rules: time and peak memory of one update, and of one whole digits training step.

    .venv/bin/python benchmarks/update_rule.py [--floats 100e6] [--tensors 320] [--repeats 5] [--device cpu]

Prints numbers; asserts nothing. "Extra buffers" is the peak memory above the parameters' own gradients,
in units of one parameter-sized fp32 buffer (CPU: peak RSS via /proc/self/clear_refs; CUDA: the allocator).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference_update import flatten_graddiff, flatten_restricted_gradient  # noqa: E402

from rgd_core.method.update_rules import graddiff_, restricted_gradient_  # noqa: E402


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS
    return rss_bytes()


def peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return peak_rss_bytes()


def make_grads(floats: int, tensors: int, device: torch.device, seed: int):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 1000, (tensors,), generator=generator).double()
    sizes = (sizes / sizes.sum() * floats).long().clamp_min(1)
    forget = [torch.randn(int(n), generator=generator).to(device) for n in sizes]
    retain = [-0.5 * f + torch.randn(f.shape, generator=generator).to(device) for f in forget]
    return forget, retain


def time_rule(name, run, forget, retain, repeats, device):
    param_bytes = sum(f.numel() * f.element_size() for f in forget)
    times, extra = [], []
    for _ in range(repeats):
        grads = [r.clone() for r in retain]
        base = reset_peak(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = run(grads, forget)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        extra.append((peak(device) - base) / param_bytes)
        del out, grads
    return name, statistics.median(times), max(extra)


def update_benchmark(args, device):
    forget, retain = make_grads(int(args.floats), args.tensors, device, seed=0)
    n = sum(f.numel() for f in forget)
    lam = 1.6

    def ours(grads, f):
        restricted_gradient_(grads, f, lam)
        return grads

    def plain(grads, f):
        graddiff_(grads, f, lam)
        return grads

    def reference(grads, f):
        return flatten_restricted_gradient(f, grads, lam)

    def reference_graddiff(grads, f):
        return flatten_graddiff(f, grads, lam)

    def axpy_floor(grads, f):  # one fused pass, read two write one: no update rule can beat this
        torch._foreach_add_(grads, f, alpha=lam)
        return grads

    for warm in (ours, plain):
        warm([r.clone() for r in retain], forget)
    results = [time_rule(*case, forget, retain, args.repeats, device) for case in [
        ("RGD (ours, in place)", ours), ("GradDiff (in place)", plain),
        ("RGD flatten reference", reference), ("GradDiff out of place", reference_graddiff),
        ("one axpy pass (floor)", axpy_floor)]]
    print(f"\none update on {n / 1e6:.0f}M floats in {len(forget)} tensors, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'rule':26s} {'ms':>9s} {'extra buffers':>14s}")
    for name, seconds, extra in results:
        print(f"{name:26s} {seconds * 1e3:9.1f} {extra:14.2f}")
    t = {name: seconds for name, seconds, _ in results}
    ours = t["RGD (ours, in place)"]
    print(f"RGD / GradDiff: {ours / t['GradDiff (in place)']:.2f}x   RGD / one axpy pass: "
          f"{ours / t['one axpy pass (floor)']:.2f}x   reference / RGD: {t['RGD flatten reference'] / ours:.1f}x")


def training_step_benchmark(args):
    from rgd_bench.class_forgetting import ClassForgettingConfig, forget_and_retain_losses
    from rgd_core.method.unlearner import Unlearner
    from rgd_bench.worlds import digits

    base = digits.load_base_model()
    images, labels = digits.load_digits_data()
    config = ClassForgettingConfig()
    forget_loss, retain_loss = forget_and_retain_losses(config, images, labels)
    steps = {}
    for method in ("graddiff", "rgd", "graddiff", "rgd"):  # interleaved so drift hits both alike
        unlearner = Unlearner(base, forget_loss, retain_loss, config.unlearn_config(method))
        for p in unlearner.params:
            p.requires_grad_(True)
        unlearner.step(0)  # warm-up
        times = []
        for k in range(args.train_steps):
            start = time.perf_counter()
            unlearner.step(k + 1)
            times.append(time.perf_counter() - start)
        steps.setdefault(method, []).extend(times)
    print(f"\nwhole digits training step (forget batch {config.forget_batch} + retain batch "
          f"{config.retain_batch}, fwd+bwd both, update, Adam), median of {2 * args.train_steps}")
    for method, times in steps.items():
        print(f"{method:10s} {statistics.median(times) * 1e3:8.1f} ms")
    print(f"RGD / GradDiff: {statistics.median(steps['rgd']) / statistics.median(steps['graddiff']):.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floats", type=float, default=100e6)
    parser.add_argument("--tensors", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-training-step", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    update_benchmark(args, device)
    if not args.skip_training_step:
        training_step_benchmark(args)


if __name__ == "__main__":
    main()
