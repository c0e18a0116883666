"""Probe: can a one-pass AdamWN step reach torch's fused AdamW on a GPU?

    python benchmarks/triton_adamwn_probe.py [--repeats 50]

Times AdamWN's one-pass multi-tensor Triton kernel (``normctl/optim/_one_pass.py``: Eq. 3's
factor, Adam's step and ‖θ_t‖² of the weights it writes, in one pass) launched with nothing
around it, next to torch's fused AdamW and to ``normctl.AdamWN`` itself (which launches the same
kernel, plus its per-step bookkeeping in Python). The gap between the last two is the host-side
cost still to remove.

Prints the kernel's agreement with ``normctl.AdamWN`` (per-tensor reference path) on GPT-2
shapes after 10 steps, and the median step time against torch's fused AdamW in the same run;
writes results/bench/triton_adamwn_probe.json. Needs CUDA and Triton.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine, summary, write_json
from step_speed import gpt2_small_shapes

from normctl import AdamWN
from normctl.optim._one_pass import BLOCK, CHUNK, _adamwn_kernel


class OnePassAdamWN:
    """Tensor-scope AdamWN (constant target r, rate k) as one Triton kernel per step."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, target=1.5, rate=1e-2):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.target, self.rate = lr, betas, eps, target, rate
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        device = self.params[0].device
        self.numels = torch.tensor([p.numel() for p in self.params], device=device)
        tensor_of_block, start_of_block = [], []
        for i, p in enumerate(self.params):
            for start in range(0, p.numel(), CHUNK):
                tensor_of_block.append(i)
                start_of_block.append(start)
        self.block_tensor = torch.tensor(tensor_of_block, dtype=torch.int32, device=device)
        self.block_start = torch.tensor(start_of_block, dtype=torch.int64, device=device)
        self.pointers = [
            torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64, device=device)
            for ts in (self.params, self.exp_avg, self.exp_avg_sq)
        ]
        norms = torch.stack(torch._foreach_norm(self.params)).float()
        self.init_norm = norms.clone()
        self.norm_sq = norms.square()  # ‖θ‖² of the current weights, kept by the kernel
        self.step_count = 0

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        grads = [p.grad for p in self.params]
        grad_ptrs = torch.tensor([g.data_ptr() for g in grads], dtype=torch.int64).to(
            self.params[0].device, non_blocking=True
        )
        # Eq. 3's factor 1 − k·(1 − τ/‖θ‖) for every tensor at once, on the device
        factors = 1 - self.rate * (1 - self.target * self.init_norm / self.norm_sq.sqrt())
        self.norm_sq.zero_()
        n = len(self.params)
        step_sizes = torch.full((n,), self.lr / (1 - beta1**self.step_count), device=self.norm_sq.device)
        bias_correction2_sqrts = torch.full((n,), (1 - beta2**self.step_count) ** 0.5, device=self.norm_sq.device)
        _adamwn_kernel[(len(self.block_tensor),)](
            self.pointers[0],
            grad_ptrs,
            self.pointers[1],
            self.pointers[2],
            self.numels,
            self.block_tensor,
            self.block_start,
            factors,
            step_sizes,
            bias_correction2_sqrts,
            self.norm_sq,
            beta1,
            beta2,
            self.eps,
            CHUNK=CHUNK,
            BLOCK=BLOCK,
        )


def make_params(shapes, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(s, device="cuda").mul_(0.02).requires_grad_() for s in shapes]


def agreement(shapes, steps: int = 10) -> dict:
    """Max relative difference to normctl.AdamWN's reference path, and of the kept norms."""
    ours, ref = make_params(shapes), make_params(shapes)
    probe = OnePassAdamWN(ours, lr=1e-3, target=1.5, rate=1e-2)
    reference = AdamWN(ref, lr=1e-3, target=1.5, rate=1e-2, foreach=False)
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(steps):
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape, device="cuda", generator=g).mul_(1e-3)
            b.grad = a.grad.clone()
        probe.step()
        reference.step()
    param_diff = max(float((a - b).norm() / b.norm()) for a, b in zip(ours, ref))
    true_norms = torch.stack(torch._foreach_norm(ours))
    norm_diff = float(((probe.norm_sq.sqrt() - true_norms).abs() / true_norms).max())
    return {"steps": steps, "max_rel_param_diff": param_diff, "max_rel_kept_norm_diff": norm_diff}


def time_steps(opt, repeats: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        opt.step()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return summary(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    shapes = gpt2_small_shapes()
    result = {"agreement": agreement(shapes), "machine": machine(), "chunk": CHUNK, "block": BLOCK}
    print("agreement with normctl.AdamWN after 10 steps:", result["agreement"], flush=True)
    timings = {}
    for label in ("torch AdamW fused", "one-pass AdamWN (Triton)", "normctl AdamWN tensor (fused path)"):
        params = make_params(shapes)
        for p in params:
            p.grad = torch.randn_like(p).mul_(1e-3)
        if label == "torch AdamW fused":
            opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
        elif label.startswith("one-pass"):
            opt = OnePassAdamWN(params)
        else:
            opt = AdamWN(params, lr=1e-3, target=1.5)
        timings[label] = time_steps(opt, args.repeats)
        del opt, params
        torch.cuda.empty_cache()
    base = timings["torch AdamW fused"]["median"]
    for label, t in timings.items():
        t["ratio_to_torch_AdamW_fused"] = t["median"] / base
        print(
            f"  {label:<36} {t['median'] * 1e3:7.3f} ms  [{t['min'] * 1e3:.3f}, {t['max'] * 1e3:.3f}]  "
            f"x{t['ratio_to_torch_AdamW_fused']:.3f}",
            flush=True,
        )
    result["timings"] = timings
    print("  ->", write_json("triton_adamwn_probe", result))


if __name__ == "__main__":
    main()
