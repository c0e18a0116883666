"""AdamWN's step as one pass over memory on CUDA: a multi-tensor Triton kernel.

Eq. 3 needs ‖θ‖ of every tensor before the step, which costs a full read of the weights on
top of Adam's pass — and torch's fused AdamW takes one weight decay per call, so a
per-tensor factor costs one kernel launch per tensor. This kernel instead:

1. reads θ, g, m, v once per element and multiplies θ by its tensor's factor
   f_i = 1 − k·(1 − τ_i/‖θ_i‖), computed in the kernel from device vectors (no host sync);
   for group and global scope ‖θ‖ is the scope's, a device scalar summed from the same vectors;
2. applies Adam's step exactly as torch's fused AdamW does and writes θ, m, v (float32, or
   bfloat16 computed in float32 and rounded on store, as torch does);
3. adds Σ θ_new² of its block into the tensor's entry of a norm vector, so the next step
   starts with ‖θ_i‖ already known and needs no separate norm pass.

What stays valid between steps is checked once per step in a single walk over the tensors
(:func:`_layout`): each weight's version counter (bumped by every in-place torch op, e.g.
``load_state_dict``) and the storage of the weight and its moments. While they are unchanged
the device tables are reused; any change rebuilds them and checks the tensors again. The kept
norms live with the CPU kernel's, in :class:`._kept_norms.KeptNorms`, under the same version
and storage test. The kernel writes through raw pointers, so its own writes leave the version
counters as they were.

Used by :class:`normctl.AdamWN` for CUDA float32/bfloat16 groups with control before the
step, when Triton is installed; every other case takes the fused/foreach/reference paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._adam import suit_one_pass
from ._auto_target import as_auto_target

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

# The work split, from benchmarks/triton_adamwn_probe.py --sweep on an H200 (GPT-2 shapes): 32k
# elements per program (one atomic add each), 1024 per load, 8 warps ran 16 % faster than
# 16k/1024/4 warps and 0.84x torch's fused AdamW kernel time.
# bfloat16 loads twice the elements per block, so that each thread still moves 16 bytes per
# load (not timed yet: the sweep was float32).
CHUNK = 32768
BLOCK = 1024
NUM_WARPS = 8
BLOCKS = {torch.float32: BLOCK, torch.bfloat16: 2 * BLOCK}


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
        ONE_NORM: tl.constexpr,
        DTYPE: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)
        start = tl.load(block_start + pid)
        n = tl.load(numels + t)
        p_ptr = tl.load(param_ptrs + t).to(tl.pointer_type(DTYPE))
        g_ptr = tl.load(grad_ptrs + t).to(tl.pointer_type(DTYPE))
        m_ptr = tl.load(exp_avg_ptrs + t).to(tl.pointer_type(DTYPE))
        v_ptr = tl.load(exp_avg_sq_ptrs + t).to(tl.pointer_type(DTYPE))
        # Eq. 3's factor f = 1 − k·(1 − τ/‖θ‖); a zero, tiny or non-finite norm leaves θ as is
        if ONE_NORM:  # group/global scope: the scope's ‖θ‖² and τ = target_scale
            ratio = target_scale / tl.sqrt(tl.load(norm_sq))
        else:  # tensor scope: τ_i = target_scale·base_i
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
            p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            p = p * f  # Eq. 3 on the pre-step weight
            m = m + (1.0 - beta1) * (g - m)  # m ← lerp(m, g, 1 − β1)
            v = beta2 * v + (1.0 - beta2) * g * g
            p = p - step_size * m / (tl.sqrt(v) / bias_correction2_sqrt + eps)
            p = p.to(DTYPE)  # ‖θ‖² below is of the weight as stored
            tl.store(p_ptr + offs, p, mask=mask)
            tl.store(m_ptr + offs, m.to(DTYPE), mask=mask)
            tl.store(v_ptr + offs, v.to(DTYPE), mask=mask)
            p = p.to(tl.float32)
            acc += tl.where(mask, p * p, 0.0)
        tl.atomic_add(next_norm_sq + t, tl.sum(acc, axis=0))


@dataclass
class KeptTables:
    """What the one-pass step keeps between steps for one param group: the layout it was
    built for and the device tables valid for that layout."""

    layout: list[tuple[int, ...]] = field(default_factory=list)
    settings: tuple[str, bool] | None = None
    tables: tuple[Tensor, ...] = ()
    steps: list[Tensor] = field(default_factory=list)  # the state's step counters
    grad_pointers: list[int | None] = field(default_factory=list)
    grad_table: Tensor | None = None
    grads: list[Tensor] = field(default_factory=list)  # this step's, until the kernel is queued
    # the tensors last refused because one has ‖θ_0‖ = 0 (the kernel would decay it; fixed at the first step)
    refused: tuple[int, ...] = ()


def group_qualifies(group: dict, first_param: Tensor) -> bool:
    """The O(1) part of the test, from the group's settings and its first tensor: Eq. 3
    before the step, on a CUDA device where Triton runs."""
    return (
        group["control"]
        and group["control_at"] == "pre_step"
        and as_auto_target(group["target"]) is None  # a measured target has no τ base in the tables
        and available(first_param.device.type)
    )


def _layout(params: Sequence[Tensor], states: Sequence[dict]) -> list[tuple[int, ...]]:
    """Per tensor: the weight's version counter and the storage of weight, moments and step."""
    return [
        (p._version, p.data_ptr(), s["exp_avg"].data_ptr(), s["exp_avg_sq"].data_ptr(), s["step"].data_ptr())
        for p, s in zip(params, states)
    ]


def _pointer_table(pointers: Sequence[int], device: torch.device) -> Tensor:
    return torch.tensor(pointers, dtype=torch.int64).to(device)


def _build_tables(params: list[Tensor], states: list[dict], group: dict) -> tuple[Tensor, ...]:
    """Pointers, block layout, τ's base (‖θ_0‖ per tensor) and the step counts, on the device."""
    device = params[0].device
    blocks = [(i, start) for i, p in enumerate(params) for start in range(0, p.numel(), CHUNK)]
    relative = group["relative_target"] and group["scope"] == "tensor"
    bases = [s["init_norm"].to(device) for s in states] if relative else [torch.ones((), device=device)] * len(params)
    return (
        _pointer_table([p.data_ptr() for p in params], device),
        _pointer_table([s["exp_avg"].data_ptr() for s in states], device),
        _pointer_table([s["exp_avg_sq"].data_ptr() for s in states], device),
        torch.tensor([p.numel() for p in params], dtype=torch.int64, device=device),
        torch.tensor([i for i, _ in blocks], dtype=torch.int32, device=device),
        torch.tensor([s for _, s in blocks], dtype=torch.int64, device=device),
        torch.stack(bases).float(),
        torch.stack([s["step"].to(device) for s in states]).float(),
    )


def prepare(params: list[Tensor], grads: list[Tensor], states: list[dict], group: dict, kept: KeptTables) -> bool:
    """Make ``kept`` ready for a step over these tensors: reuse its tables while the layout
    holds, else check the tensors and rebuild them. False (nothing changed) when the tensors
    do not suit the kernel."""
    settings = (group["scope"], group["relative_target"])  # what the tables' τ base depends on
    if kept.refused and kept.refused == tuple(map(id, params)) and settings == kept.settings:
        return False
    layout = _layout(params, states) if kept.layout and settings == kept.settings else None
    if layout is None or layout != kept.layout:  # new tensors or storage, weights changed in place
        if not suit_one_pass(params, states):  # before any data_ptr(): a DTensor has none to give
            return False
        layout = layout or _layout(params, states)
        kept.settings = settings
        # a relative target leaves tensors with ‖θ_0‖ = 0 uncontrolled; the kernel has no such case
        if group["relative_target"] and group["scope"] == "tensor":
            if bool(torch.stack([s["init_norm"] for s in states]).eq(0).any()):
                kept.refused = tuple(map(id, params))
                return False
        kept.tables = _build_tables(params, states, group)
        kept.steps = [s["step"] for s in states]
        kept.grad_pointers = []
        kept.layout = layout  # the kernel writes through pointers: versions stay as they are
    # Autograd usually hands out gradients at the same addresses every step: reuse the table.
    grad_pointers = [g.data_ptr() if g.is_contiguous() else None for g in grads]
    kept.grads = grads
    if grad_pointers != kept.grad_pointers or None in grad_pointers:
        if None in grad_pointers:  # contiguous copies, held until the kernel is queued
            kept.grads = [g.contiguous() for g in grads]
        kept.grad_table = _pointer_table([g.data_ptr() for g in kept.grads], params[0].device)
        kept.grad_pointers = grad_pointers
    return True


def launch(
    kept: KeptTables,
    group: dict,
    norm_sq: Tensor,
    *,
    rate: float,
    target: float,
    scope_norm_sq: Tensor | None = None,
) -> Tensor:
    """One AdamWN step over the prepared tensors in one kernel; returns ‖θ_i‖² after it
    (float32, one per tensor), which the next step reads as its ``norm_sq``.

    ``rate`` is k_t. Tensor scope passes ``target`` as r_t (or τ_t when absolute) and the
    kernel reads each ‖θ_i‖ from ``norm_sq`` (float32, one per tensor, before the step); group
    and global scope pass τ_t itself and the scope's ``scope_norm_sq``."""
    param_table, exp_avg_table, exp_avg_sq_table, numels, block_tensor, block_start, base, step = kept.tables
    torch._foreach_add_(kept.steps, 1)
    step.add_(1)
    next_norm_sq = torch.zeros_like(norm_sq)  # the kernel adds each block's Σ θ_new² into it
    if len(block_tensor):  # else only empty tensors
        beta1, beta2 = group["betas"]
        _adamwn_kernel[(len(block_tensor),)](
            param_table,
            kept.grad_table,
            exp_avg_table,
            exp_avg_sq_table,
            numels,
            block_tensor,
            block_start,
            base,
            step,
            norm_sq if scope_norm_sq is None else scope_norm_sq,
            next_norm_sq,
            target,
            rate,
            group["lr"],
            beta1,
            beta2,
            group["eps"],
            ONE_NORM=scope_norm_sq is not None,
            DTYPE=tl.bfloat16 if kept.grads[0].dtype == torch.bfloat16 else tl.float32,
            CHUNK=CHUNK,
            BLOCK=BLOCKS[kept.grads[0].dtype],
            num_warps=NUM_WARPS,
        )
    kept.grads = []
    return next_norm_sq
