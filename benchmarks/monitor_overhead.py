"""Step-time overhead of NormMonitor(every=10) on a small GPT on CPU, measured in one run.

    python benchmarks/monitor_overhead.py [--repeats 15] [--steps 30]

Blocks of training steps with and without the monitor alternate, so that drift of the
machine hits both alike; each block's mean step time is one sample. Prints the median
and spread of both and their ratio (target: <= 1.05), and writes results/bench/monitor_overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine, summary, write_json
from normctl_lab.models import GPT, GPTConfig

from normctl import AdamWN, param_groups
from normctl.monitor import MemorySink, NormMonitor


def block(model, opt, monitor, steps, data) -> float:
    start = time.perf_counter()
    for x in data[:steps]:
        _, loss = model(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.observe(loss=loss)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30, help="steps per block (a multiple of every)")
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(cfg)
    opt = AdamWN(param_groups(model), lr=1e-3, target=1.5)
    data = [torch.randint(0, 256, (16, cfg.block_size)) for _ in range(args.steps)]
    monitor = NormMonitor(model, opt, every=args.every, sinks=[MemorySink()])
    monitor.close()  # detached: the "without" blocks run with no hooks at all
    block(model, opt, None, args.steps, data)  # warm-up

    def monitored() -> float:
        monitor = NormMonitor(model, opt, every=args.every, sinks=[MemorySink()])
        seconds = block(model, opt, monitor, args.steps, data)
        monitor.close()
        return seconds

    without, with_monitor = [], []
    for r in range(args.repeats):
        if r % 2:  # alternate the order within a pair, so a slow drift favours neither
            with_monitor.append(monitored())
            without.append(block(model, opt, None, args.steps, data))
        else:
            without.append(block(model, opt, None, args.steps, data))
            with_monitor.append(monitored())
        print(
            f"repeat {r + 1}/{args.repeats}: {without[-1] * 1e3:.1f} ms vs {with_monitor[-1] * 1e3:.1f} ms per step",
            flush=True,
        )
    ratios = [w / o for w, o in zip(with_monitor, without)]
    # The monitor's own work on a measured step, timed directly (less noisy than whole steps).
    monitor = NormMonitor(model, opt, every=1, sinks=[MemorySink()])
    hook_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        monitor._before_step(opt, (), {})
        monitor._after_step(opt, (), {})
        monitor.observe()
        hook_seconds.append(time.perf_counter() - start)
    monitor.close()
    estimate = statistics.median(hook_seconds) / args.every / statistics.median(without)
    result = {
        "model": "GPT n_layer=4 n_embd=128 block=64 batch=16",
        "every": args.every,
        "params": sum(p.numel() for p in model.parameters()),
        "step_seconds_without": summary(without),
        "step_seconds_with": summary(with_monitor),
        "overhead_ratio": summary(ratios),
        "monitor_seconds_per_measured_step": summary(hook_seconds),
        "overhead_estimate_from_direct_timing": estimate,
        "machine": machine(),
    }
    path = write_json("monitor_overhead", result)
    print(
        f"overhead ratio (with / without), median {result['overhead_ratio']['median']:.3f} "
        f"[{min(ratios):.3f}, {max(ratios):.3f}] over {args.repeats} paired blocks; "
        f"direct timing: {statistics.median(hook_seconds) * 1e3:.1f} ms per measured step = "
        f"{estimate:.1%} of a step at every={args.every} -> {path}"
    )


if __name__ == "__main__":
    main()
