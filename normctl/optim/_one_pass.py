"""AdamWN's step as one pass over memory on CUDA: a multi-tensor Triton kernel.

Eq. 3 needs ‖θ‖ of every tensor before the step, which costs a full read of the weights on
top of Adam's pass — and torch's fused AdamW takes one weight decay per call, so a
per-tensor factor costs one kernel launch per tensor. This kernel instead:

1. reads θ, g, m, v once per element and multiplies θ by its tensor's factor
   f_i = 1 − k·(1 − τ_i/‖θ_i‖), computed in the kernel from device vectors (no host sync);
2. applies Adam's step exactly as torch's fused AdamW does and writes θ, m, v;
3. adds Σ θ_new² of its block into the tensor's entry of a norm vector, so the next step
   starts with ‖θ_i‖ already known and needs no separate norm pass.

The kept norms are trusted only while the weights are the kernel's own output: each tensor's
version counter (bumped by every in-place torch op, e.g. ``load_state_dict``) and storage are
recorded after the step, and any change makes the next step measure the norms afresh.

Used by :class:`normctl.AdamWN` for CUDA float32 tensor-scope groups with control before the
step, when Triton is installed; every other case takes the fused/foreach/reference paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import rules

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

CHUNK = 16384  # elements per program: one atomic add per 16k elements
BLOCK = 1024


def available(device_type: str = "cuda") -> bool:
    """Whether the one-pass kernel runs on this kind of device here (CUDA with Triton)."""
    return device_type == "cuda" and triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _adamwn_kernel(
        param_ptrs,
        grad_ptrs,
        exp_avg_ptrs,
        exp_avg_sq_ptrs,
        numels,
        block_tensor,
        block_start,
        target_base,
        steps,
        norm_sq,
        next_norm_sq,
        target_scale,
        rate,
        lr,
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
        # Eq. 3's factor f = 1 − k·(1 − τ/‖θ‖); a zero, tiny or non-finite norm leaves θ as is
        ratio = target_scale * tl.load(target_base + t) / tl.sqrt(tl.load(norm_sq + t))
        ratio = tl.where(tl.abs(ratio) < 3.0e38, ratio, 1.0)  # false for inf and NaN
        f = 1.0 - rate * (1.0 - ratio)
        # Adam's bias corrections at this tensor's step count
        step = tl.load(steps + t)
        step_size = lr / (1.0 - tl.exp(step * tl.log(beta1)))
        bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp(step * tl.log(beta2)))
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, CHUNK, BLOCK):
            offs = start + i + tl.arange(0, BLOCK)
            mask = offs < n
            p = tl.load(p_ptr + offs, mask=mask, other=0.0)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0)
            m = tl.load(m_ptr + offs, mask=mask, other=0.0)
            v = tl.load(v_ptr + offs, mask=mask, other=0.0)
            p = p * f  # Eq. 3 on the pre-step weight
            m = m + (1.0 - beta1) * (g - m)  # m ← lerp(m, g, 1 − β1)
            v = beta2 * v + (1.0 - beta2) * g * g
            p = p - step_size * m / (tl.sqrt(v) / bias_correction2_sqrt + eps)
            tl.store(p_ptr + offs, p, mask=mask)
            tl.store(m_ptr + offs, m, mask=mask)
            tl.store(v_ptr + offs, v, mask=mask)
            acc += tl.where(mask, p * p, 0.0)
        tl.atomic_add(next_norm_sq + t, tl.sum(acc, axis=0))


@dataclass
class KeptNorms:
    """What the one-pass step keeps between steps for one param group: ‖θ_i‖² as the kernel
    left the tensors (and how to tell they still are), and device tables that stay valid
    while the same tensors are stepped."""

    norm_sq: Tensor | None = None
    spare: Tensor | None = None  # the buffer the next step accumulates into
    versions: tuple[tuple[int, int], ...] = ()
    tables: dict[Any, tuple[Tensor, ...]] = field(default_factory=dict)
    grad_table: tuple[tuple[int, ...], Tensor | None] = ((), None)


def eligible(params: Sequence[Tensor], group: dict) -> bool:
    if not (
        params
        and group["control"]
        and group["scope"] == "tensor"
        and group["control_at"] == "pre_step"
        and all(type(p) in (torch.Tensor, torch.nn.Parameter) for p in params)  # no DTensor or other subclass
    ):
        return False
    device = params[0].device
    return all(
        p.device == device and p.dtype == torch.float32 and p.is_contiguous() and p.numel() for p in params
    ) and available(device.type)


def _versions(params: Sequence[Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((p._version, p.data_ptr()) for p in params)


def _pointer_table(pointers: Sequence[int], device: torch.device) -> Tensor:
    return torch.tensor(pointers, dtype=torch.int64).to(device)


def adamwn_step_(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    group: dict,
    rate: float,
    target: float,
    kept: KeptNorms,
) -> None:
    """One AdamWN step (tensor scope, control before the step) over ``params`` in one kernel."""
    device = params[0].device
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]

    # Tables valid while the same tensors are stepped (rebuilt when any is replaced, as
    # load_state_dict does): pointers, block layout, τ's base and the step counts.
    key = tuple(t.data_ptr() for t in (*params, *exp_avgs, *exp_avg_sqs, *steps))
    if key in kept.tables:
        kept.tables[key][-1].add_(1)
    else:
        blocks = [(i, start) for i, p in enumerate(params) for start in range(0, p.numel(), CHUNK)]
        bases = [s["init_norm"] for s in states] if group["relative_target"] else [torch.ones(())] * len(params)
        kept.tables = {  # one entry: the tables of the tensors this group has now
            key: (
                _pointer_table([p.data_ptr() for p in params], device),
                _pointer_table([m.data_ptr() for m in exp_avgs], device),
                _pointer_table([v.data_ptr() for v in exp_avg_sqs], device),
                torch.tensor([p.numel() for p in params], dtype=torch.int64, device=device),
                torch.tensor([i for i, _ in blocks], dtype=torch.int32, device=device),
                torch.tensor([s for _, s in blocks], dtype=torch.int64, device=device),
                torch.stack([b.to(device) for b in bases]).float(),
                torch.stack(steps).to(device, torch.float32),
            )
        }
    param_table, exp_avg_table, exp_avg_sq_table, numels, block_tensor, block_start, base, step = kept.tables[key]
    # Autograd usually hands out gradients at the same addresses every step: reuse the table.
    grad_pointers = tuple(g.data_ptr() for g in grads)
    if kept.grad_table[0] != grad_pointers:
        kept.grad_table = (grad_pointers, _pointer_table(grad_pointers, device))

    if kept.norm_sq is None or kept.versions != _versions(params):  # weights changed since
        kept.norm_sq = torch.stack(rules.tensor_norms(params)).float().square()
    if kept.spare is None or kept.spare.shape != kept.norm_sq.shape:
        kept.spare = torch.empty_like(kept.norm_sq)
    next_norm_sq = kept.spare.zero_()
    beta1, beta2 = group["betas"]
    _adamwn_kernel[(len(block_tensor),)](
        param_table,
        kept.grad_table[1],
        exp_avg_table,
        exp_avg_sq_table,
        numels,
        block_tensor,
        block_start,
        base,
        step,
        kept.norm_sq,
        next_norm_sq,
        target,
        rate,
        group["lr"],
        beta1,
        beta2,
        group["eps"],
        CHUNK=CHUNK,
        BLOCK=BLOCK,
    )
    kept.spare, kept.norm_sq = kept.norm_sq, next_norm_sq
    kept.versions = _versions(params)  # the kernel writes through pointers: versions unchanged
