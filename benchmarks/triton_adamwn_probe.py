"""Probe: can a one-pass AdamWN step reach torch's fused AdamW on a GPU?

    python benchmarks/triton_adamwn_probe.py [--repeats 50]

AdamWN's fused path today folds Eq. 3 into torch's fused AdamW as a per-tensor weight decay,
which costs one kernel launch per tensor and a separate norm pass. This probe times the
alternative the speed issue proposes: one multi-tensor Triton kernel that applies Eq. 3's
factor, Adam's step, and accumulates ‖θ_t‖² of the weights it writes, so that the next step
needs no norm pass. It is not wired into ``AdamWN``; it measures whether doing so pays.

Prints the kernel's agreement with ``normctl.AdamWN`` (per-tensor reference path) on GPT-2
shapes after 10 steps, and the median step time against torch's fused AdamW in the same run;
writes results/bench/triton_adamwn_probe.json. Needs CUDA and Triton.
"""

from __future__ import annotations

import argparse
import time

import torch
import triton
import triton.language as tl
from common import machine, summary, write_json
from step_speed import gpt2_small_shapes

from normctl import AdamWN

CHUNK = 16384  # elements per program: a few thousand programs on GPT-2, one atomic add each
BLOCK = 1024


@triton.jit
def _adamwn_kernel(
    param_ptrs,
    grad_ptrs,
    exp_avg_ptrs,
    exp_avg_sq_ptrs,
    numels,
    block_tensor,
    block_start,
    factors,
    norm_sq,
    step_size,
    bias_correction2_sqrt,
    beta1,
    beta2,
    eps,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    start = tl.load(block_start + pid)
    n = tl.load(numels + t)
    p_ptr = tl.load(param_ptrs + t).to(tl.pointer_type(tl.float32))
    g_ptr = tl.load(grad_ptrs + t).to(tl.pointer_type(tl.float32))
    m_ptr = tl.load(exp_avg_ptrs + t).to(tl.pointer_type(tl.float32))
    v_ptr = tl.load(exp_avg_sq_ptrs + t).to(tl.pointer_type(tl.float32))
    f = tl.load(factors + t)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(p_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        p = p * f  # Eq. 3 before the step (control_at="pre_step")
        m = m + (1.0 - beta1) * (g - m)
        v = beta2 * v + (1.0 - beta2) * g * g
        p = p - step_size * m / (tl.sqrt(v) / bias_correction2_sqrt + eps)
        tl.store(p_ptr + offs, p, mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        acc += tl.where(mask, p * p, 0.0)
    tl.atomic_add(norm_sq + t, tl.sum(acc, axis=0))


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
        _adamwn_kernel[(len(self.block_tensor),)](
            self.pointers[0],
            grad_ptrs,
            self.pointers[1],
            self.pointers[2],
            self.numels,
            self.block_tensor,
            self.block_start,
            factors,
            self.norm_sq,
            self.lr / (1 - beta1**self.step_count),
            (1 - beta2**self.step_count) ** 0.5,
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
