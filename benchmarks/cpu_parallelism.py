"""Several runs at once, or one run on every core: which trains a CPU sweep faster?

`train_runs(..., workers=N)` trains N single-threaded runs at once, which suits small models
whose matrix products are too small to split across threads. For wide models the products
dominate and each one already uses every core well, while runs side by side compete for the
shared cache and memory bandwidth. This script measures both ways for the Voronoi model at
several widths, in the same run, and prints the sweep time per step of each (one run on all
cores: its time per step; one run per core: the time per step of one of them divided by the
number running), repeated, as median [min, max], with the ratio per-core / all-cores (above
1: one run at a time is faster).

    python benchmarks/cpu_parallelism.py [--widths 512,1024,2048] [--repeats 3]

It writes results/bench/cpu_parallelism.json, as the other benchmarks write theirs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, summary, write_json  # noqa: E402


def time_steps(hidden: int, threads: int, steps: int, warmup: int = 3) -> float:
    """Seconds per training step (batch 1024, AdamW) of the Voronoi model at this width."""
    import torch
    from normctl_lab.voronoi import VoronoiModel, VoronoiTask
    from torch.nn import functional as F

    torch.set_num_threads(threads)
    model, task = VoronoiModel(hidden=hidden), VoronoiTask(held_out=1)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)

    def step() -> None:
        x, y = task.batch(1024, generator)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def in_processes(hidden: int, threads: int, steps: int, count: int) -> list[float]:
    """Seconds per step of each of ``count`` processes training at once."""
    command = [sys.executable, __file__, "--worker", str(hidden), str(threads), str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    running = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return [float(p.communicate()[0]) for p in running]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="512,1024,2048")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: about 5 s of work per width)")
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(time_steps(*args.worker))
        return

    cores = os.cpu_count() or 1
    results = {"machine": machine(), "cores": cores, "widths": {}}
    for hidden in [int(w) for w in args.widths.split(",")]:
        steps = args.steps or max(5, int(20 * (512 / hidden) ** 2))
        all_cores, per_core = [], []
        for _ in range(args.repeats):  # interleaved, so that drift hits both ways alike
            all_cores += in_processes(hidden, cores, steps, 1)
            per_core.append(max(in_processes(hidden, 1, steps, cores)) / cores)
        row = {"steps": steps, "one_run_all_cores": summary(all_cores), "one_run_per_core": summary(per_core)}
        row["ratio_per_core_over_all_cores"] = row["one_run_per_core"]["median"] / row["one_run_all_cores"]["median"]
        results["widths"][hidden] = row
        a, p = row["one_run_all_cores"], row["one_run_per_core"]
        print(
            f"width {hidden:5d}: one run on {cores} cores {a['median'] * 1e3:7.1f} ms/step "
            f"[{a['min'] * 1e3:.1f}, {a['max'] * 1e3:.1f}]; {cores} runs at once "
            f"{p['median'] * 1e3:7.1f} ms/step [{p['min'] * 1e3:.1f}, {p['max'] * 1e3:.1f}]; "
            f"ratio {row['ratio_per_core_over_all_cores']:.2f}",
            flush=True,
        )
    print("  ->", write_json("cpu_parallelism", results))


if __name__ == "__main__":
    main()
