"""Probe: can a one-pass AdamWN step reach torch's fused AdamW on a GPU?

    python benchmarks/triton_adamwn_probe.py [--repeats 50] [--sweep]

Times AdamWN's one-pass multi-tensor Triton kernel (``normctl/optim/_one_pass.py``: Eq. 3's
factor, Adam's step and ‖θ_t‖² of the weights it writes, in one pass) launched with nothing
around it, next to torch's fused AdamW and to ``normctl.AdamWN`` itself (which launches the same
kernel, plus its per-step bookkeeping in Python), each scope. Each row also gives the host's
share: how long ``step()`` takes to return with its kernels queued. The gap between the bare
kernel and normctl.AdamWN is the host-side cost still to remove.

Prints the kernel's agreement with ``normctl.AdamWN`` (per-tensor reference path) on GPT-2
shapes after 10 steps, and the median step time against torch's fused AdamW in the same run;
writes results/bench/triton_adamwn_probe.json. Needs CUDA and Triton.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from common import machine, summary, write_json
from step_speed import gpt2_small_shapes

from normctl import AdamWN
from normctl.optim._one_pass import BLOCK, CHUNK, NUM_WARPS, _adamwn_kernel, tl


class OnePassAdamWN:
    """Tensor-scope AdamWN (constant target r, rate k): the kernel launched with nothing
    around it, every table prepared once."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        target=1.5,
        rate=1e-2,
        chunk=CHUNK,
        block=BLOCK,
        num_warps=NUM_WARPS,
    ):
        self.params = list(params)
        self.chunk, self.block, self.num_warps = chunk, block, num_warps
        self.lr, self.betas, self.eps, self.target, self.rate = lr, betas, eps, target, rate
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        device = self.params[0].device
        self.numels = torch.tensor([p.numel() for p in self.params], device=device)
        blocks = [(i, start) for i, p in enumerate(self.params) for start in range(0, p.numel(), chunk)]
        self.block_tensor = torch.tensor([i for i, _ in blocks], dtype=torch.int32, device=device)
        self.block_start = torch.tensor([s for _, s in blocks], dtype=torch.int64, device=device)
        self.tables = [
            torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64, device=device)
            for ts in (self.params, [p.grad for p in self.params], self.exp_avg, self.exp_avg_sq)
        ]
        norms = torch.stack(torch._foreach_norm(self.params)).float()
        self.init_norm = norms.clone()
        self.norm_sq, self.spare = norms.square(), torch.empty_like(norms)
        self.steps = torch.zeros(len(self.params), device=device)

    @torch.no_grad()
    def step(self) -> None:  # the gradients stay where they were allocated (the timing loop)
        self.steps.add_(1)
        next_norm_sq = self.spare.zero_()
        _adamwn_kernel[(len(self.block_tensor),)](
            self.tables[0],
            self.tables[1],
            self.tables[2],
            self.tables[3],
            self.numels,
            self.block_tensor,
            self.block_start,
            self.init_norm,
            self.steps,
            self.norm_sq,
            next_norm_sq,
            self.target,
            self.rate,
            self.lr,
            *self.betas,
            self.eps,
            ONE_NORM=False,
            DTYPE=tl.float32,
            CHUNK=self.chunk,
            BLOCK=self.block,
            num_warps=self.num_warps,
        )
        self.spare, self.norm_sq = self.norm_sq, next_norm_sq


def make_params(shapes, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(s, device="cuda").mul_(0.02).requires_grad_() for s in shapes]


def agreement(shapes, steps: int = 10) -> dict:
    """Max relative difference to normctl.AdamWN's reference path, and of the kept norms."""
    ours, ref = make_params(shapes), make_params(shapes)
    for a in ours:
        a.grad = torch.zeros_like(a)
    probe = OnePassAdamWN(ours, lr=1e-3, target=1.5, rate=1e-2)
    reference = AdamWN(ref, lr=1e-3, target=1.5, rate=1e-2, foreach=False)
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(steps):
        for a, b in zip(ours, ref):
            a.grad.copy_(torch.randn(a.shape, device="cuda", generator=g).mul_(1e-3))
            b.grad = a.grad.clone()
        probe.step()
        reference.step()
    param_diff = max(float((a - b).norm() / b.norm()) for a, b in zip(ours, ref))
    true_norms = torch.stack(torch._foreach_norm(ours))
    norm_diff = float(((probe.norm_sq.sqrt() - true_norms).abs() / true_norms).max())
    return {"steps": steps, "max_rel_param_diff": param_diff, "max_rel_kept_norm_diff": norm_diff}


def time_steps(opt, repeats: int, warmup: int = 3) -> dict:
    """Step time to completion, and the host's share: the time until ``step()`` returns with
    its kernels queued (the GPU idle before it, so no wait for earlier work is counted)."""
    for _ in range(warmup):
        opt.step()
    torch.cuda.synchronize()
    samples, host = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        host.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return {**summary(samples), "host": summary(host)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--sweep", action="store_true", help="also time the bare kernel at other work splits")
    args = parser.parse_args()
    shapes = gpt2_small_shapes()
    result = {
        "agreement": agreement(shapes),
        "machine": machine(),
        "chunk": CHUNK,
        "block": BLOCK,
        "num_warps": NUM_WARPS,
    }
    print("agreement with normctl.AdamWN after 10 steps:", result["agreement"], flush=True)
    timings = {}
    makers = {
        "torch AdamW fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
        "one-pass AdamWN (Triton)": OnePassAdamWN,
        "normctl AdamWN tensor": lambda p: AdamWN(p, lr=1e-3, target=1.5),
        "normctl AdamWN group": lambda p: AdamWN(p, lr=1e-3, target=1.5, scope="group"),
        "normctl AdamWN global": lambda p: AdamWN(p, lr=1e-3, target=1.5, scope="global"),
    }
    for label, make in makers.items():
        params = make_params(shapes)
        for p in params:
            p.grad = torch.randn_like(p).mul_(1e-3)
        opt = make(params)
        timings[label] = time_steps(opt, args.repeats)
        del opt, params
        torch.cuda.empty_cache()
    base = timings["torch AdamW fused"]["median"]
    for label, t in timings.items():
        t["ratio_to_torch_AdamW_fused"] = t["median"] / base
        print(
            f"  {label:<36} {t['median'] * 1e3:7.3f} ms  [{t['min'] * 1e3:.3f}, {t['max'] * 1e3:.3f}]  "
            f"x{t['ratio_to_torch_AdamW_fused']:.3f}  host {t['host']['median'] * 1e3:.3f} ms",
            flush=True,
        )
    result["timings"] = timings
    if args.sweep:  # the bare kernel at other work splits: elements per program, per load, warps
        base_kernel = timings["one-pass AdamWN (Triton)"]["median"]
        sweep = []
        for chunk, block, num_warps in itertools.product((4096, 8192, 16384, 32768), (1024, 2048, 4096), (4, 8)):
            if block > chunk:
                continue
            params = make_params(shapes)
            for p in params:
                p.grad = torch.randn_like(p).mul_(1e-3)
            t = time_steps(OnePassAdamWN(params, chunk=chunk, block=block, num_warps=num_warps), args.repeats)
            sweep.append(
                {
                    "chunk": chunk,
                    "block": block,
                    "num_warps": num_warps,
                    **t,
                    "ratio_to_torch_AdamW_fused": t["median"] / base,
                }
            )
            print(
                f"  chunk {chunk:6} block {block:5} warps {num_warps}  {t['median'] * 1e3:7.3f} ms  "
                f"x{t['median'] / base:.3f}  (x{t['median'] / base_kernel:.3f} of the default split)",
                flush=True,
            )
            del params
            torch.cuda.empty_cache()
        result["sweep"] = sweep
    print("  ->", write_json("triton_adamwn_probe", result))


if __name__ == "__main__":
    main()
