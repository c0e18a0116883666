"""AdamWN's step as one pass over memory on CUDA: a multi-tensor Triton kernel.

Eq. 3 needs ‖θ‖ of every tensor before the step, which costs a full read of the weights on
top of Adam's pass — and torch's fused AdamW takes one weight decay per call, so a
per-tensor factor costs one kernel launch per tensor. This kernel instead:

1. reads θ, g, m, v once per element and multiplies θ by its tensor's factor
   f_i = 1 − k·(1 − τ_i/‖θ_i‖) (a device vector: no host sync);
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


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


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
        factors,
        step_sizes,
        bias_correction2_sqrts,
        norm_sq,
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
        step_size = tl.load(step_sizes + t)
        bias_correction2_sqrt = tl.load(bias_correction2_sqrts + t)
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
        tl.atomic_add(norm_sq + t, tl.sum(acc, axis=0))


@dataclass
class KeptNorms:
    """‖θ_i‖² as the last one-pass step left the tensors, and how to tell they still are."""

    norm_sq: Tensor | None = None
    versions: tuple[tuple[int, int], ...] = ()
    tables: dict[Any, tuple[Tensor, ...]] = field(default_factory=dict)


def eligible(params: Sequence[Tensor], group: dict) -> bool:
    return (
        available()
        and group["control"]
        and group["scope"] == "tensor"
        and group["control_at"] == "pre_step"
        and all(p.is_cuda and p.dtype == torch.float32 and p.is_contiguous() and p.numel() for p in params)
        and all(type(p) in (torch.Tensor, torch.nn.Parameter) for p in params)  # no DTensor or other subclass
    )


def _versions(params: Sequence[Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((p._version, p.data_ptr()) for p in params)


def _pointer_table(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64).to(device, non_blocking=True)


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
    grads = [g.contiguous() for g in grads]
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    if kept.norm_sq is None or kept.versions != _versions(params):
        norms = torch.stack(rules.tensor_norms(params))
    else:
        norms = kept.norm_sq.sqrt()
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    # Tables that stay valid while the same tensors are stepped: pointers, block layout, the
    # initial norms and a device copy of the step counts (rebuilt when any tensor is replaced,
    # as load_state_dict does).
    key = tuple(t.data_ptr() for t in (*params, *exp_avgs, *exp_avg_sqs, *steps))
    if key in kept.tables:
        kept.tables[key][-1].add_(1)
    else:
        blocks = [(i, start) for i, p in enumerate(params) for start in range(0, p.numel(), CHUNK)]
        init_norms = [s.get("init_norm", torch.zeros(())) for s in states]
        kept.tables = {  # one entry: the tables of the tensors this group has now
            key: (
                _pointer_table(params, device),
                _pointer_table(exp_avgs, device),
                _pointer_table(exp_avg_sqs, device),
                torch.tensor([p.numel() for p in params], dtype=torch.int64, device=device),
                torch.tensor([i for i, _ in blocks], dtype=torch.int32, device=device),
                torch.tensor([s for _, s in blocks], dtype=torch.int64, device=device),
                torch.stack(init_norms).to(device, torch.float32),
                torch.stack(steps).to(device, torch.float32),
            )
        }
    param_table, exp_avg_table, exp_avg_sq_table, numels, block_tensor, block_start, init, step = kept.tables[key]

    target_norms = target * init if group["relative_target"] else torch.full_like(init, target)  # τ_i
    factors = rules.norm_control_factor(norms, target_norms, rate).float()
    beta1, beta2 = group["betas"]
    step_sizes = group["lr"] / (1 - beta1**step)
    bias_correction2_sqrts = (1 - beta2**step).sqrt()
    norm_sq = torch.zeros(len(params), dtype=torch.float32, device=device)
    _adamwn_kernel[(len(block_tensor),)](
        param_table,
        _pointer_table(grads, device),
        exp_avg_table,
        exp_avg_sq_table,
        numels,
        block_tensor,
        block_start,
        factors,
        step_sizes,
        bias_correction2_sqrts,
        norm_sq,
        beta1,
        beta2,
        group["eps"],
        CHUNK=CHUNK,
        BLOCK=BLOCK,
    )
    kept.norm_sq = norm_sq
    kept.versions = _versions(params)  # the kernel writes through pointers: versions unchanged
